"""What a database error means for a ``sql`` delivery, said without a value in it.

A database's error text can quote what was bound: PostgreSQL's ``DETAIL: Key
(session_id)=(...) already exists`` or ``invalid input syntax for type integer: "..."``,
and SQLAlchemy's own message appends the parameters. Bound values are protected health
information, so no error text is ever passed on whole. An error is named by its SQLSTATE
(PostgreSQL, ODBC), SQLite's error name or the driver's error number, and the driver's
error class; then, where the driver gives them apart from the text, the names of the
schema objects involved (table, column, constraint), and the database's own message only
when it has one of a few shapes known to quote the statement or the schema and never a
value (``relation "notes" does not exist``, ``UNIQUE constraint failed: notes.id``).

Retried: the connection failing or lost, timeouts, deadlocks, serialization failures,
a server shutting down or out of resources, SQLite's locks and I/O errors. Every other
error the database raised about the statement fails for good: the same statement with the
same values would fail the same way (integrity, syntax, a missing table or column,
permissions, a value of the wrong type).

Imported only when a ``sql`` action delivers (it imports SQLAlchemy).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import exc as sa_exc

from suki_relay.plugin import DeliveryError, PermanentError, RetryableError

# PostgreSQL's SQLSTATE classes that are about the moment, not the statement: connection
# exception, transaction rollback (serialization failure, deadlock), insufficient
# resources, operator intervention (statement_timeout's query_canceled, a shutdown),
# system error (I/O)
RETRY_CLASSES = frozenset({"08", "40", "53", "57", "58"})
RETRY_STATES = frozenset({
    "55P03",  # lock_not_available (lock_timeout)
    "55006",  # object_in_use
    "25006",  # read_only_sql_transaction: a standby not yet promoted after a failover
    "HYT00", "HYT01",  # ODBC: timeout expired, connection timeout expired
})
TIMEOUT_STATES = frozenset({"57014", "HYT00", "HYT01"})
DEADLOCK_STATES = frozenset({"40P01", "40001"})
NAMES = {"57014": "the statement ran past timeout_seconds", "40P01": "deadlock",
         "40001": "serialization failure", "55P03": "lock not available",
         "57P01": "the server is shutting down", "57P03": "the server is starting up",
         "53300": "too many connections", "25006": "read-only transaction"}

SQLITE_RETRY = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_CANTOPEN",
                "SQLITE_PROTOCOL", "SQLITE_NOMEM", "SQLITE_INTERRUPT")
# MySQL and MariaDB error numbers (PyMySQL, mysqlclient put them first in args) that retry:
# too many connections, lock wait timeout, deadlock, can't connect, server gone or lost,
# shutdown, statement time exceeded, connection killed, disconnected
MYSQL_RETRY = frozenset({1040, 1205, 1213, 2002, 2003, 2006, 2013, 2055, 1053, 3024, 1927,
                         4031})

_NAME = r'"[^"\x00-\x1f]{1,63}"'
PG_SAFE = [re.compile(p) for p in (
    rf"relation {_NAME} does not exist",
    rf"column {_NAME}( of relation {_NAME})? does not exist",
    rf"column (\w+\.)?{_NAME} does not exist",
    r'syntax error at or near "[^"\x00-\x1f]{1,40}"',
    r"syntax error at end of input",
    r"permission denied for (table|relation|schema|sequence) [\w.$]{1,63}",
    r"there is no unique or exclusion constraint matching the ON CONFLICT specification",
    rf"schema {_NAME} does not exist",
    r"function [\w.]{1,63}\([\w ,\[\]]{0,200}\) does not exist",
    rf"column {_NAME} is of type [\w ]{{1,40}} but expression is of type [\w ]{{1,40}}",
)]
_IDENT = r"[\w.$]{1,128}"
SQLITE_SAFE = [re.compile(p) for p in (
    rf"(UNIQUE|NOT NULL|CHECK|FOREIGN KEY|PRIMARY KEY) constraint failed(: {_IDENT}(, {_IDENT})*)?",
    rf"no such (table|column): {_IDENT}",
    rf"table {_IDENT} has no column named {_IDENT}",
    r'near "[^"\x00-\x1f]{1,40}": syntax error',
    r"incomplete input",
    r"database is locked|database table is locked|attempt to write a readonly database",
    r"unable to open database file|disk I/O error|database or disk is full",
    rf"cannot store \w+ value in \w+ column {_IDENT}",
)]


def outcome(exc: BaseException) -> DeliveryError:
    """The error to raise for ``exc`` (an exception from SQLAlchemy or the driver)."""
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no connection to give in time
        return RetryableError("no database connection free within timeout_seconds "
                              "(pool TimeoutError)")
    if not isinstance(exc, sa_exc.DBAPIError):
        # SQLAlchemy refusing before the driver ran (a bind parameter with no value, an
        # unsupported value type): the same on every retry
        return PermanentError(f"the statement could not be run ({type(exc).__name__})")
    orig = exc.orig
    cls = type(orig).__name__
    code, detail = _code(orig)
    names = _detail(orig, code)
    said = f"{code} {cls}" if code else cls
    if names:
        said += f" ({names})"
    if _retryable(exc, orig, code):
        if exc.statement is None and exc.connection_invalidated:  # lost at COMMIT
            return RetryableError("the connection was lost at COMMIT, so whether it "
                                  f"committed is unknown; it is run again: {said}")
        if exc.statement is None:  # connecting failed: nothing was run
            return RetryableError(f"cannot connect to the database: {said}")
        state = _state(code) or ""
        what = NAMES["57014"] if state in TIMEOUT_STATES else NAMES.get(state, "database error")
        return RetryableError(f"{what}: {said}" if detail is None else f"{what}: {said}: {detail}")
    what = _permanent_kind(exc)
    return PermanentError(f"{what}: {said}" + (f": {detail}" if detail else ""))


def _code(orig: Any) -> tuple[str | None, str | None]:
    """The error's code (SQLSTATE, SQLite's error name, a MySQL error number) and the
    database's message when it has a shape known to hold no value."""
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(sqlstate, str) and sqlstate:
        return f"SQLSTATE {sqlstate}", _safe(_pg_primary(orig), PG_SAFE)
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str) and name:
        return name, _safe(str(orig.args[0]) if orig.args else None, SQLITE_SAFE)
    first = orig.args[0] if getattr(orig, "args", None) else None
    if isinstance(first, str) and re.fullmatch(r"[0-9A-Z]{5}", first):  # pyodbc: SQLSTATE
        return f"SQLSTATE {first}", None
    if isinstance(first, int) and not isinstance(first, bool):  # PyMySQL, mysqlclient
        return f"error {first}", None
    return None, None


def _state(code: str | None) -> str | None:
    return code.removeprefix("SQLSTATE ") if code and code.startswith("SQLSTATE ") else None


def _retryable(exc: sa_exc.DBAPIError, orig: Any, code: str | None) -> bool:
    state = _state(code)
    if state is not None:
        return state[:2] in RETRY_CLASSES or state in RETRY_STATES
    if code and code.startswith("SQLITE_"):
        return code.startswith(SQLITE_RETRY)
    if code and code.startswith("error "):
        return int(code.split()[1]) in MYSQL_RETRY
    if exc.connection_invalidated or exc.statement is None:
        return True  # lost or never made: the statement did not run
    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.InternalError)


def _permanent_kind(exc: sa_exc.DBAPIError) -> str:
    if isinstance(exc, sa_exc.IntegrityError):
        return "integrity error (fails for good)"
    if isinstance(exc, sa_exc.DataError):
        return "a value the database refused (fails for good)"
    return "the database refused the statement (fails for good)"


def _pg_primary(orig: Any) -> str | None:
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return primary if isinstance(primary, str) else None


def _safe(message: str | None, shapes: list[re.Pattern[str]]) -> str | None:
    if not message:
        return None
    message = message.strip()
    return message if any(p.fullmatch(message) for p in shapes) else None


def _detail(orig: Any, code: str | None) -> str:
    """The schema objects PostgreSQL names apart from its message: they are the
    database's own names, never a value."""
    diag = getattr(orig, "diag", None)
    if diag is None:
        return ""
    parts = []
    for what in ("schema", "table", "column", "constraint"):
        value = getattr(diag, f"{what}_name", None)
        if isinstance(value, str) and value and re.fullmatch(r"[^\x00-\x1f]{1,63}", value):
            parts.append(f"{what} {value}")
    return ", ".join(parts)
