"""twistd plugin: `twistd -n evc --etcd URL --root /evc/<site>`; all wiring lives in evc.tap."""
from twisted.application.service import ServiceMaker

evc = ServiceMaker("EVC", "evc.tap", "Electric-vehicle charging site controller", "evc")
