"""A service that owns the store connection: closing it when EVC stops."""
from twisted.application import service


class StoreService(service.Service):
    def __init__(self, store):
        self.store = store
        self.setName("store")

    def stopService(self):
        super().stopService()
        return self.store.close()
