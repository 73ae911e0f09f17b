import pytest

from kiln_contract.netguard import UnsafeURL, check_url


@pytest.mark.parametrize(("url", "why"), [
    ("https://169.254.169.254/latest/meta-data/", "metadata"),
    ("https://127.0.0.1:9/data.csv", "loopback"),
    ("https://localhost/data.csv", "loopback"),
    ("https://[::1]/x", "loopback"),
    ("https://[::ffff:169.254.169.254]/x", "metadata"),
    ("https://169.254.10.10/x", "link-local"),
    ("https://0.0.0.0/x", "unspecified"),
    ("http://data.example/x.csv", "only https"),
])
def test_refused(url, why):
    with pytest.raises(UnsafeURL, match=why):
        check_url(url)


def test_private_ranges_only_when_asked(monkeypatch):
    check_url("https://10.1.2.3/data.csv")
    monkeypatch.setenv("KILN_BLOCK_PRIVATE_NETWORKS", "true")
    with pytest.raises(UnsafeURL, match="private"):
        check_url("https://10.1.2.3/data.csv")
