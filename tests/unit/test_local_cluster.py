"""Pure parts of the local cluster: Dockerfile reading and Kubernetes' command rules."""

from kiln_local import dockerfile


def test_parse_takes_the_final_stage_entrypoint_cmd_and_env():
    text = """
FROM python:3.11 AS build
ENTRYPOINT ["make"]
FROM python:3.11-slim
ENV A=1 B="two words"
ENV C 3
# a comment
CMD ["--help"]
ENTRYPOINT ["python", \\
            "-m", "kiln_trainer"]
CMD ["--spec", "/etc/kiln/spec.yaml"]
"""
    cfg = dockerfile.parse(text)
    assert cfg.entrypoint == ["python", "-m", "kiln_trainer"]
    assert cfg.cmd == ["--spec", "/etc/kiln/spec.yaml"]
    assert cfg.env == {"A": "1", "B": "two words", "C": "3"}


def test_shell_form_runs_through_sh():
    assert dockerfile.parse("FROM x\nCMD echo hi").cmd == ["/bin/sh", "-c", "echo hi"]


def test_kubernetes_command_and_args_rules():
    cfg = dockerfile.ImageConfig(entrypoint=["python", "-m", "srv"], cmd=["--port", "1"])
    assert dockerfile.argv_for(cfg, None, None) == ["python", "-m", "srv", "--port", "1"]
    assert dockerfile.argv_for(cfg, None, ["--port", "2"]) == ["python", "-m", "srv", "--port", "2"]
    assert dockerfile.argv_for(cfg, ["sh"], None) == ["sh"]  # command drops CMD too
    assert dockerfile.argv_for(cfg, ["sh"], ["-c", "x"]) == ["sh", "-c", "x"]


def test_image_names_map_to_repo_dockerfiles():
    assert dockerfile.image_name("ghcr.io/org/kiln-trainer:0.1@sha256:abc") == "kiln-trainer"
    assert dockerfile.image_name("kiln/server") == "server"
    assert dockerfile.dockerfile_for("nginx:1.25") is None
    assert dockerfile.dockerfile_for("kiln/operator:dev").name == "Dockerfile"
