"""The store over SQL, written once for both backends (SQLite and PostgreSQL).

Assembled from one module per concern: tx.py (a transaction, and what a backend
supplies), schema.py (the tables as numbered migrations), ledger.py (the request and
delivery paths) and admin.py (inspection and repair). A backend subclasses SqlStore.
"""

from __future__ import annotations

from suki_relay.store.admin import Admin
from suki_relay.store.audit import AuditLedger
from suki_relay.store.health import HealthLedger
from suki_relay.store.ledger import Ledger
from suki_relay.store.refusals import RejectionLedger
from suki_relay.store.schema import ensure_schema
from suki_relay.store.sessions import RecoveryLedger


class SqlStore(Ledger, Admin, RecoveryLedger, RejectionLedger, HealthLedger,
               AuditLedger):
    def ensure_schema(self) -> None:
        """Create or upgrade the schema; a backend calls this last in __init__. If it fails
        (unreachable, newer than this code) the connections it opened are closed."""
        try:
            ensure_schema(self)
        except BaseException:
            self.close()
            raise

    def ping(self) -> None:
        with self.tx() as tx:
            tx.exec("UPDATE relay_schema SET version = version WHERE version < 0")
