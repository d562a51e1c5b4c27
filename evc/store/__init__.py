"""The store: EVC's view of etcd (configuration, state and persistent data)."""
from evc.store.interface import (
    IStore, IWatch, KeyValue, Event, RangeResult, TxnResult, Compare, Put, Delete, prefix_end,
)

__all__ = ["IStore", "IWatch", "KeyValue", "Event", "RangeResult", "TxnResult",
           "Compare", "Put", "Delete", "prefix_end"]
