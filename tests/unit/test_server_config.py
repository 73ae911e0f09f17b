"""Flags and their environment variables."""

from __future__ import annotations

import pytest

from kiln_server.config import Config, parse, version_from_uri


def test_flags_from_env_and_flags_winning():
    env = {"KILN_MODEL_URI": "s3://b/models/iris/v3", "KILN_MODEL_NAME": "iris", "KILN_PORT": "9000",
           "KILN_WORKERS": "4", "KILN_ALLOW_UNSAFE_FORMATS": "true", "KILN_RUNTIME": "sklearn",
           "KILN_BATCH_MAX_LATENCY_MS": "0.5", "KILN_EXPECTED_SHA256": "AB" * 32}
    cfg = parse([], env)
    assert (cfg.model_uri, cfg.name, cfg.port, cfg.workers) == ("s3://b/models/iris/v3", "iris", 9000, 4)
    assert cfg.allow_unsafe_formats and cfg.runtime == "sklearn" and cfg.batch_max_latency_ms == 0.5
    assert cfg.version == "3" and cfg.expected_sha256 == "ab" * 32
    cfg = parse(["--port", "8081", "--version", "7", "--name", "other"], env)
    assert (cfg.port, cfg.version, cfg.name) == (8081, "7", "other")
    assert Config.from_json(cfg.to_json()) == cfg


def test_defaults():
    cfg = parse(["--model", "/m", "--name", "n"], {})
    assert (cfg.host, cfg.port, cfg.workers, cfg.version, cfg.runtime) == ("127.0.0.1", 8080, 1, "1", "")
    assert cfg.max_body_bytes == 8 << 20 and not cfg.allow_unsafe_formats
    assert cfg.payload_log_compression == "snappy"
    assert parse(["--model", "/m", "--name", "n"], {"KILN_PAYLOAD_LOG_COMPRESSION": "none"}).payload_log_compression \
        == "none"


@pytest.mark.parametrize("argv, env", [
    ([], {}),
    (["--model", "/m"], {}),
    (["--model", "/m", "--name", "n", "--workers", "0"], {}),
    (["--model", "/m", "--name", "n"], {"KILN_ALLOW_UNSAFE_FORMATS": "maybe"}),
    (["--model", "/m", "--name", "n", "--expected-sha256", "123"], {}),
    (["--model", "/m", "--name", "a/b"], {}),
    (["--model", "/m", "--name", "n", "--runtime", "torch"], {}),
    (["--model", "/m", "--name", "n"], {"KILN_PAYLOAD_LOG_COMPRESSION": "gzip"}),
])
def test_bad_configuration_is_a_usage_error(argv, env):
    with pytest.raises(SystemExit) as info:
        parse(argv, env)
    assert info.value.code == 2


@pytest.mark.parametrize("uri, version", [
    ("s3://b/p/iris/v12", "12"), ("s3://b/p/iris/v12/", "12"), ("/tmp/model", "1"), ("/x/v1beta", "1"),
])
def test_version_from_uri(uri, version):
    assert version_from_uri(uri) == version


def test_limits_from_flags_and_env_with_their_defaults():
    cfg = parse(["--model", "/m", "--name", "n"], {})
    assert (cfg.max_elements, cfg.max_string_length) == (1 << 20, 4096)
    assert (cfg.max_url_bytes, cfg.max_header_bytes, cfg.max_headers) == (8 << 10, 32 << 10, 100)
    assert (cfg.request_timeout_s, cfg.keep_alive_timeout_s, cfg.max_connections) == (10.0, 15.0, 1024)
    assert cfg.expected_card_sha256 == ""
    env = {"KILN_MAX_ELEMENTS": "500", "KILN_MAX_STRING_LENGTH": "16", "KILN_MAX_URL_BYTES": "1024",
           "KILN_MAX_HEADER_BYTES": "2048", "KILN_MAX_HEADERS": "20", "KILN_REQUEST_TIMEOUT_S": "2.5",
           "KILN_KEEP_ALIVE_TIMEOUT_S": "3", "KILN_MAX_CONNECTIONS": "64", "KILN_EXPECTED_CARD_SHA256": "CD" * 32}
    cfg = parse(["--model", "/m", "--name", "n", "--max-headers", "30"], env)
    assert (cfg.max_elements, cfg.max_string_length, cfg.max_url_bytes, cfg.max_header_bytes) == (500, 16, 1024, 2048)
    assert (cfg.max_headers, cfg.request_timeout_s, cfg.keep_alive_timeout_s, cfg.max_connections) == (30, 2.5, 3, 64)
    assert cfg.expected_card_sha256 == "cd" * 32
    assert Config.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("argv", [
    ["--expected-card-sha256", "123"],
    ["--expected-card-sha256", "g" * 64],
    ["--max-elements", "0"],
    ["--max-string-length", "-1"],
    ["--max-url-bytes", "0"],
    ["--max-header-bytes", "0"],
    ["--max-headers", "0"],
    ["--max-connections", "0"],
    ["--request-timeout-s", "0"],
    ["--keep-alive-timeout-s", "-1"],
])
def test_bad_limits_are_usage_errors(argv):
    with pytest.raises(SystemExit) as info:
        parse(["--model", "/m", "--name", "n", *argv], {})
    assert info.value.code == 2


def test_the_sample_rate_file_is_read_at_start_and_a_bad_one_is_refused_naming_the_flag(tmp_path, capsys):
    rate = tmp_path / "sampleRate"
    rate.write_text("0.25\n")
    base = ["--model", "/m", "--name", "n", "--payload-log-uri", "s3://b/logs", "--payload-log-sample-rate", "1"]
    cfg = parse(base, {"KILN_PAYLOAD_LOG_SAMPLE_RATE_FILE": str(rate)})
    assert cfg.payload_log_sample_rate == 0.25 and cfg.payload_log_sample_rate_file == str(rate)
    for path, text in ((rate, "all of them"), (tmp_path / "missing", None)):
        if text is not None:
            path.write_text(text)
        with pytest.raises(SystemExit) as info:
            parse([*base, "--payload-log-sample-rate-file", str(path)], {})
        assert info.value.code == 2
        assert "--payload-log-sample-rate-file: " in capsys.readouterr().err
