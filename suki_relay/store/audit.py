"""The store's side of the console's audit trail: who signed in, who viewed which
payload, who replayed, rerouted or resumed what, and what was refused them. One row per
action, never a payload; the newest KEEP rows are kept."""

from __future__ import annotations

import time
from dataclasses import fields

from suki_relay.store.base import new_id
from suki_relay.store.rows import AuditRow
from suki_relay.store.tx import Backend

KEEP = 100_000
COLUMNS = ", ".join(f.name for f in fields(AuditRow))


class AuditLedger(Backend):
    """Part of SqlStore (table: console_audit)."""

    def add_audit(self, user: str, role: str, action: str, target: str | None = None,
                  detail: str | None = None, client: str | None = None) -> None:
        """Record one console action (and trim the oldest beyond KEEP, now and then)."""
        row_id = new_id("aud")
        with self.tx() as tx:
            tx.exec(f"INSERT INTO console_audit ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (row_id, time.time(), user[:64], role[:16], action[:64],
                     (target or "")[:200] or None, (detail or "")[:500] or None,
                     (client or "")[:64] or None))
            if row_id.endswith("00"):  # about once in 256 rows
                edge = tx.one("SELECT at FROM console_audit ORDER BY at DESC LIMIT 1 OFFSET ?",
                              (KEEP - 1,))
                if edge is not None:
                    tx.exec("DELETE FROM console_audit WHERE at < ?", (edge["at"],))

    def audit_log(self, limit: int = 200, user: str | None = None) -> list[AuditRow]:
        """Newest first."""
        where, params = ("WHERE user_name = ? ", [user]) if user else ("", [])
        with self.tx(write=False) as tx:
            return [AuditRow(*row) for row in tx.tuples(
                f"SELECT {COLUMNS} FROM console_audit {where}ORDER BY at DESC, id DESC LIMIT ?",
                (*params, limit))]
