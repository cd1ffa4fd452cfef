"""A local CBX1 API for demos and tests: `Sandbox` in Python, `cbx1-sandbox` on the command line."""

from target_cbx1.sandbox.chaos import Chaos
from target_cbx1.sandbox.faults import FaultSpecError
from target_cbx1.sandbox.ingestion import StoredEntity
from target_cbx1.sandbox.server import DEFAULT_ACCESS_KEY, DEFAULT_ORG_ID, Exchange, Sandbox
from target_cbx1.sandbox.store import StoredRecord

__all__ = [
    "DEFAULT_ACCESS_KEY",
    "DEFAULT_ORG_ID",
    "Chaos",
    "Exchange",
    "FaultSpecError",
    "Sandbox",
    "StoredEntity",
    "StoredRecord",
]
