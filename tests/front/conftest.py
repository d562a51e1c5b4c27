"""The fronts' tests (ocpp, ocpi, manual): every twisted.logger event of a test, printed when it fails."""
import pytest
from twisted.logger import formatEvent, globalLogPublisher


@pytest.fixture(autouse=True)
def log_events(request):
    """Every twisted.logger event emitted during the test (shown with the failure report)."""
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for e in seen[-200:]:
            text = formatEvent(e)
            if e.get("log_failure") is not None:
                text += "\n" + e["log_failure"].getTraceback()
            print(f"[{e.get('log_namespace')}] {text}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
