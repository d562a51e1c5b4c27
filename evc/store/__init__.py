"""The store: EVC's view of etcd (configuration, state and persistent data)."""
from evc.store.interface import (
    IStore, IWatch, KeyValue, Event, RangeResult, TxnResult, Compare, Put, Delete,
)
from evc.store.etcd import EtcdError, EtcdStore
from evc.store.memory import MemoryStore

__all__ = ["IStore", "IWatch", "KeyValue", "Event", "RangeResult", "TxnResult",
           "Compare", "Put", "Delete", "EtcdStore", "EtcdError", "MemoryStore"]
