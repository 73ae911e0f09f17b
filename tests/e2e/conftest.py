"""End-to-end tests on a kind cluster: they run where Docker works and kind, helm and kubectl are installed."""


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: needs Docker, kind, helm and kubectl (a real cluster in containers)")
