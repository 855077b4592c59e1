"""The store over SQL, written once for both backends (SQLite and PostgreSQL).

Assembled from one module per concern: tx.py (a transaction, and what a backend
supplies), schema.py (the tables as numbered migrations), ledger.py (the request and
delivery paths) and admin.py (inspection and repair). A backend subclasses SqlStore.
"""

from __future__ import annotations

from .admin import Admin
from .ledger import Ledger
from .recovery import RecoveryLedger
from .rejections import RejectionLedger
from .schema import ensure_schema


class SqlStore(Ledger, Admin, RecoveryLedger, RejectionLedger):
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
