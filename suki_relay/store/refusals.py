"""The store's side of the rejected-request record: a small table that never grows past
KEEP rows (the newest are kept). Rows carry no body and no header value other than the
measured skew: time, reason, HTTP status, skew in ms, remote address, and how many
identical refusals (same reason, same address) one row stands for."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from suki_relay.store.base import new_id
from suki_relay.store.rows import RejectionRow
from suki_relay.store.tx import Backend, Tx

KEEP = 1000
COLUMNS = ", ".join(f.name for f in fields(RejectionRow))


@dataclass
class Rejection:
    """One refused request, or several alike (same reason and address) close together."""

    first_at: float
    last_at: float
    reason: str
    http_status: int
    skew_ms: int | None
    remote_addr: str | None
    count: int = 1


class RejectionLedger(Backend):
    """Part of SqlStore (table: migration 2)."""

    def add_rejections(self, rows: list[Rejection], keep: int = KEEP) -> None:
        """Append, then trim to the newest ``keep`` rows (one indexed delete)."""
        if not rows:
            return
        with self.tx(durable=False) as tx:
            tx.many("INSERT INTO rejections (id, first_at, last_at, reason, http_status, "
                    "skew_ms, remote_addr, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(new_id("rej"), r.first_at, r.last_at, r.reason[:64], r.http_status,
                      r.skew_ms, (r.remote_addr or "")[:64] or None, r.count) for r in rows])
            self._trim(tx, keep)

    @staticmethod
    def _trim(tx: Tx, keep: int) -> None:
        edge = tx.one("SELECT last_at FROM rejections ORDER BY last_at DESC LIMIT 1 OFFSET ?",
                      (keep - 1,))
        if edge is not None:
            tx.exec("DELETE FROM rejections WHERE last_at < ?", (edge["last_at"],))

    def rejections(self, since: float | None = None, reason: str | None = None,
                   limit: int = 100) -> list[RejectionRow]:
        """Newest first."""
        where, params = ["1 = 1"], list[Any]()
        if since is not None:
            where.append("last_at >= ?")
            params.append(since)
        if reason is not None:
            where.append("reason = ?")
            params.append(reason)
        with self.tx(write=False) as tx:
            return [RejectionRow(*row) for row in tx.tuples(
                f"SELECT {COLUMNS} FROM rejections WHERE {' AND '.join(where)} "
                "ORDER BY last_at DESC, id DESC LIMIT ?", (*params, limit))]
