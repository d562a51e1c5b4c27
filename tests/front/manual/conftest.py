import pytest
import pytest_twisted
from twisted.internet import defer

from web_helpers import Rig


@pytest.fixture
def rig(etcd_session, etcd_root):
    """The simulated site with front/local (users alice: operator, bob: viewer), started."""
    made = Rig(etcd_session.url, etcd_root)
    pytest_twisted.blockon(defer.ensureDeferred(made.start()))
    yield made
    pytest_twisted.blockon(defer.ensureDeferred(made.stop()))
