"""What a namespace may reach (kiln_operator.tenancy): storage prefixes and scheduling keys."""

import pytest

from kiln_operator import tenancy
from kiln_operator.settings import DEFAULT_NODE_SELECTOR_KEYS

DEFAULT = "s3://kiln/models"


def writable(ns, extra=None):
    return tenancy.writable(ns, DEFAULT, extra or {})


@pytest.mark.parametrize("uri", [
    "s3://kiln/models/team-a", "s3://kiln/models/team-a/", "s3://kiln/models/team-a/sub/dir",
])
def test_own_namespace_prefix_is_allowed(uri):
    tenancy.within(uri, writable("team-a"), "spec.storage")


@pytest.mark.parametrize("uri,why", [
    ("s3://kiln", "outside"),                              # the audit's reproduction: the whole bucket
    ("s3://kiln/models", "outside"),                       # every namespace's models
    ("s3://kiln/models/team-b", "outside"),                # another tenant
    ("s3://kiln/models/team-ab", "outside"),               # a sibling sharing the name's start
    ("s3://other/models/team-a", "outside"),               # same key, another bucket
    ("s3://kiln/models/team-a/../team-b", "'..'"),         # a filer could normalise this out of the prefix
    ("s3://kiln/models/team-a/./x", "'.'"),
    ("s3://kiln/models/team-a//x", "empty"),
    ("s3://kiln/models/team-a\\..\\team-b", "backslash"),
    ("s3://kiln/models/team-a/\x00", "control"),
    ("https://kiln/models/team-a", "not an s3"),
])
def test_everything_else_is_refused_naming_the_field(uri, why):
    with pytest.raises(tenancy.NotAllowed) as err:
        tenancy.within(uri, writable("team-a"), "spec.storage")
    assert err.value.field == "spec.storage" and str(err.value).startswith("spec.storage: ") and why in str(err.value)


def test_admin_prefixes_per_namespace_and_for_all():
    extra = tenancy.parse_prefix_map('{"team-a": ["s3://lake/a"], "*": ["s3://kiln/shared/{namespace}"]}', "X")
    assert writable("team-a", extra) == ["s3://kiln/models/team-a", "s3://kiln/shared/team-a", "s3://lake/a"]
    assert writable("team-b", extra) == ["s3://kiln/models/team-b", "s3://kiln/shared/team-b"]
    tenancy.within("s3://lake/a/x", writable("team-a", extra), "f")
    with pytest.raises(tenancy.NotAllowed):
        tenancy.within("s3://lake/a/x", writable("team-b", extra), "f")
    with pytest.raises(tenancy.NotAllowed):
        tenancy.within("s3://kiln/shared/team-a/x", writable("team-b", extra), "f")


def test_read_prefixes_only_widen_reads():
    read = {"*": ["s3://kiln/datasets/{namespace}"]}
    readable = tenancy.readable("team-a", DEFAULT, {}, read)
    tenancy.within("s3://kiln/datasets/team-a/t.csv", readable, "spec.dataset.uri")
    tenancy.within("s3://kiln/models/team-a/m/v1/model.onnx", readable, "spec.dataset.uri")
    with pytest.raises(tenancy.NotAllowed):
        tenancy.within("s3://kiln/datasets/team-a/t.csv", writable("team-a"), "spec.storage")


@pytest.mark.parametrize("text", ["[1]", '{"ns": "s3://x"}', "{bad", '{"ns": ["s3://x/../y"]}'])
def test_bad_prefix_settings_are_refused_at_start(text):
    with pytest.raises(ValueError):
        tenancy.parse_prefix_map(text, "KILN_STORAGE_PREFIXES")


TOLERATIONS = ["nvidia.com/gpu", "kiln.dev/*"]
SELECTORS = DEFAULT_NODE_SELECTOR_KEYS.split(",")


@pytest.mark.parametrize("spec,field", [
    ({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
     "spec.tolerations[0].key"),
    ({"tolerations": [{"key": "nvidia.com/gpu"}, {"operator": "Exists"}]}, "spec.tolerations[1].key"),
    ({"tolerations": [{"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}]},
     "spec.tolerations[0].key"),
    ({"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}},
     "spec.nodeSelector.node-role.kubernetes.io/control-plane"),
    ({"nodeSelector": {"kubernetes.io/hostname": "cp-1"}}, "spec.nodeSelector.kubernetes.io/hostname"),
])
def test_scheduling_onto_control_plane_is_refused(spec, field):
    with pytest.raises(tenancy.NotAllowed) as err:
        tenancy.check_scheduling(spec, TOLERATIONS, SELECTORS)
    assert err.value.field == field


@pytest.mark.parametrize("name, allowed, ok", [
    (None, ["default-scheduler"], True), ("default-scheduler", ["default-scheduler"], True),
    ("volcano", ["default-scheduler"], False), ("volcano", ["default-scheduler", "volcano"], True),
    ("kiln-bench-held", ["kiln-bench-*"], True), ("my-scheduler", ["*"], True), ("volcano", [], False),
])
def test_scheduler_names_come_from_the_platform_allowlist(name, allowed, ok):
    spec = {"schedulerName": name} if name else {}
    if ok:
        tenancy.check_scheduling(spec, TOLERATIONS, SELECTORS, allowed)
        return
    with pytest.raises(tenancy.NotAllowed) as err:
        tenancy.check_scheduling(spec, TOLERATIONS, SELECTORS, allowed)
    assert err.value.field == "spec.schedulerName" and repr(name) in err.value.message


def test_allowed_scheduling_passes_and_star_allows_everything():
    spec = {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}, {"key": "kiln.dev/pool"}],
            "nodeSelector": {"nvidia.com/gpu.present": "true", "topology.kubernetes.io/zone": "a",
                             "kubernetes.io/arch": "amd64"}}
    tenancy.check_scheduling(spec, TOLERATIONS, SELECTORS)
    tenancy.check_scheduling({"tolerations": [{"operator": "Exists"}], "nodeSelector": {"any": "x"}}, ["*"], ["*"])
    with pytest.raises(tenancy.NotAllowed):
        tenancy.check_scheduling({"nodeSelector": {"gpu": "yes"}}, TOLERATIONS, [])
