"""Shared test policy: an integration test that skips is a failure when
CNLB_REQUIRE_INTEGRATION=1 (CI sets it), so a green CI means clusters were really built."""

import os

import pytest

REQUIRE = os.environ.get("CNLB_REQUIRE_INTEGRATION") == "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE and report.skipped and item.get_closest_marker("integration"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"integration test skipped while CNLB_REQUIRE_INTEGRATION=1: {reason}"
