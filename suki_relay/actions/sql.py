"""``sql``: write the note, or anything about the event, into a table of your own.

One statement, or a short list run in one transaction, with named bind parameters
(``:session_id``); ``params`` maps each name to a template. Rendered values are only ever
bound, never pasted into the SQL text: a statement holding template syntax is refused at
``check``, so no payload can change what the statement does (SQL injection), and the
database sees the same statement text on every delivery.

SQLAlchemy Core does the talking (any dialect whose driver is installed; PostgreSQL
through psycopg 3, and SQLite, out of the box). It is imported only when a ``sql`` action
is configured: a relay without one never loads it.

* One engine, and so one connection pool, per action and per process, created at the
  first delivery (``check`` and ``routes test`` open no connection), sized by the action's
  ``max_concurrency``, which no process can exceed. Connections are tested before use
  (``pool_pre_ping``): after a database restart the dead ones are replaced, and the
  attempt that finds the database still down is retried like any other.
* ``timeout_seconds`` bounds connecting and each statement: PostgreSQL's
  ``connect_timeout`` and ``statement_timeout`` (which also bounds waiting for a lock),
  SQLite's busy timeout (waiting for another writer), and the wait for a free pooled
  connection.
* SQLite: every transaction starts with ``BEGIN IMMEDIATE`` (the write lock, waited for
  within the busy timeout, so a list of statements is one transaction and two writers
  never deadlock); a database file the relay creates is owner-only. A relative path is
  relative to actions.yaml's folder, as for the store.
* Outcomes (sql_outcomes.py): a lost or refused connection, a timeout, a deadlock or a
  serialization failure retries; an integrity error, a syntax error or a missing table
  fails for good. Errors name the SQLSTATE (or SQLite's error name) and the driver's
  error class, never a bound value.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suki_relay.plugin import MASK, Action, Delivery, Option, PermanentError, mask_secret_keys

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.sql.elements import TextClause

TEMPLATE_SYNTAX = re.compile(r"\{[{%#]")
MAX_STATEMENTS = 20
# plain postgresql:// would mean psycopg2 to SQLAlchemy; the relay ships psycopg 3
DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
LIBPQ_DRIVERS = ("psycopg", "psycopg2")
MYSQL_DRIVERS = ("pymysql", "mysqldb")
_ENGINE_LOCK = threading.Lock()  # making or dropping an engine (rare; not per delivery)
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SCALARS = (str, int, float, bool, type(None))
URL_FORM = ("not a SQLAlchemy database URL (dialect[+driver]://user:password@host:port/"
            "database, or sqlite:///file.db); a password holding @ : / or % must be "
            "percent-encoded")


def statement_problem(value: Any) -> str | None:
    """What is wrong with the ``statement`` option, or None. Template syntax is refused:
    a value pasted into SQL text could change the statement; bound, it cannot."""
    statements = [value] if isinstance(value, str) else value
    if not statements:
        return "expected one SQL statement, or a list of them"
    if len(statements) > MAX_STATEMENTS:
        return f"at most {MAX_STATEMENTS} statements in one transaction, got {len(statements)}"
    for n, statement in enumerate(statements, 1):
        which = "" if isinstance(value, str) else f"statement {n}: "
        if not isinstance(statement, str) or not statement.strip():
            return f"{which}expected SQL text"
        found = TEMPLATE_SYNTAX.search(statement)
        if found:
            return (f"{which}template syntax {found.group()!r} in SQL text; values are never "
                    "pasted into a statement: name a bind parameter (:name) and give its "
                    "template under params")
    return None


def database_url(text: str, base_dir: Path) -> URL:
    """The SQLAlchemy URL of ``text`` (ArgumentError if it has not the form of one), with
    plain postgresql:// meaning psycopg 3 and a relative SQLite path made absolute."""
    from sqlalchemy.engine import make_url

    url = make_url(text)
    if url.drivername in DRIVERS:
        url = url.set(drivername=DRIVERS[url.drivername])
    if url.get_backend_name() == "sqlite" and _sqlite_file(url):
        path = Path(str(url.database))
        if not path.is_absolute():
            url = url.set(database=str(base_dir / path))
    return url


def _sqlite_file(url: URL) -> bool:
    """A plain file path (not in memory, not a file: URI, whose meaning is SQLite's)."""
    db = url.database or ""
    return db not in ("", ":memory:") and not db.startswith("file:") and \
        url.query.get("uri") not in ("true", "1")


class SqlAction(Action):
    description = "write rows into a database table (SQLAlchemy; PostgreSQL and SQLite built in)"
    options = {
        "url": Option(str, required=True, secret=True, template=False,
                      help="a SQLAlchemy database URL, e.g. postgresql://user:${DB_PASSWORD}"
                           "@db.example.org/clinic"),
        "statement": Option((str, list), required=True, template=False, check=statement_problem,
                            help="SQL with named bind parameters (:session_id); a list runs "
                                 "in one transaction"),
        "params": Option(dict, default={},
                         help="bind parameter name: template (or a plain value); only ever "
                              "bound, never pasted into the SQL"),
        "timeout_seconds": Option(float, default=10.0, positive=True, max=3600, template=False,
                                  help="bounds connecting and each statement"),
    }

    _engine: Engine | None = None  # this process's, made at the first delivery

    # ---------------------------------------------------------------- config

    @property
    def statements(self) -> list[str]:
        value = self.values["statement"]
        return [str(value)] if isinstance(value, str) else [str(s) for s in value]

    @property
    def url(self) -> URL:
        return database_url(str(self.values["url"]), self.relay.base_dir)

    def check(self) -> list[str]:
        """The URL's form, dialect and driver, and the bind parameters against ``params``:
        all without connecting."""
        problems = [*self._url_problems(), *self._param_problems()]
        return problems

    def _url_problems(self) -> list[str]:
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            url = self.url
        except ArgumentError:
            return [f"url: {URL_FORM}"]  # the text itself is never repeated: it may hold a password
        try:
            dialect = url.get_dialect()
        except NoSuchModuleError:
            return [f"url: no SQLAlchemy dialect {url.drivername!r} is installed (install the "
                    "package that provides it)"]
        try:
            dialect.import_dbapi()
        except ImportError as exc:
            return [f"url: the driver of {url.drivername!r} is not installed (no module "
                    f"{exc.name or '?'}); pip install it next to suki-relay"]
        if url.get_backend_name() == "sqlite" and not url.database:
            return ["url: an in-memory SQLite database is lost with each connection; give a "
                    "file (sqlite:///notes.db, relative to this file's folder)"]
        return []

    def _param_problems(self) -> list[str]:
        from sqlalchemy import text

        problems = []
        params = self.values["params"]
        for key, value in params.items():
            if not isinstance(key, str) or not PARAM_NAME.fullmatch(key):
                problems.append(f"params: {key!r} is not a bind parameter name (letters, digits "
                                "and _)")
            elif not isinstance(value, SCALARS) and not hasattr(value, "render"):
                problems.append(f"params.{key}: expected a template or a plain value, got a "
                                f"{'list' if isinstance(value, list) else 'mapping'}")
        used: set[str] = set()
        for n, statement in enumerate(self.statements, 1):
            names = set(text(statement).compile().params)
            used |= names
            missing = sorted(names - set(params))
            if missing:
                which = "statement" if len(self.statements) == 1 else f"statement {n}"
                problems.append(f"{which} binds {', '.join(':' + m for m in missing)}, which "
                                "params does not give")
        unused = sorted(set(params) - used)
        if unused:
            problems.append(f"params: no statement binds {', '.join(':' + u for u in unused)}")
        return problems

    # ---------------------------------------------------------------- delivering

    def bound(self, delivery: Delivery) -> dict[str, Any]:
        """The values bound for this delivery: each template rendered (a string), each
        plain YAML value as it is."""
        rendered = self.render("params", delivery) or {}
        return {str(k): v for k, v in rendered.items()}

    def deliver(self, delivery: Delivery) -> str | None:
        params = self.bound(delivery)
        from sqlalchemy import exc as sa_exc

        from suki_relay.actions.sql_outcomes import outcome

        rows = 0
        try:
            with self.engine().begin() as conn:
                for statement in self._texts:
                    result = conn.execute(statement, params)
                    rows += max(result.rowcount or 0, 0)
        except sa_exc.SQLAlchemyError as exc:
            raise outcome(exc) from None
        return f"committed; {rows} row(s) affected"

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        """The statement and the values that would be bound; nothing is connected to."""
        url = self.url
        query = mask_secret_keys(dict(url.query))
        shown = url.set(query=query).render_as_string(hide_password=True)
        statement: Any = self.statements if isinstance(self.values["statement"], list) \
            else self.statements[0]
        return {"url": shown.replace("%2A%2A%2A", MASK), "statement": statement,
                "params": mask_secret_keys(self.bound(delivery))}

    def close(self) -> None:
        with _ENGINE_LOCK:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    # ---------------------------------------------------------------- the engine

    @functools.cached_property
    def _texts(self) -> list[TextClause]:
        from sqlalchemy import text

        return [text(s) for s in self.statements]

    def engine(self) -> Engine:
        """This process's engine, made at its first delivery: deliveries run only in a
        started process (serve/process.py), never before gunicorn forks it, so an engine
        and its connections never cross a fork."""
        engine = self._engine
        if engine is not None:
            return engine
        with _ENGINE_LOCK:
            if self._engine is None:
                self._engine = self._create_engine()
            return self._engine

    def _create_engine(self) -> Engine:
        from sqlalchemy import create_engine, event

        url = self.url
        timeout = float(self.values["timeout_seconds"])
        backend, driver = url.get_backend_name(), url.get_driver_name()
        connect_args: dict[str, Any] = {}
        if backend == "postgresql" and driver in LIBPQ_DRIVERS:
            given = url.query.get("options") or ""
            given = " ".join(given) if isinstance(given, tuple) else given
            connect_args["connect_timeout"] = max(2, math.ceil(timeout))  # libpq's least
            # first, so a statement_timeout the URL's own options set wins
            connect_args["options"] = f"-c statement_timeout={math.ceil(timeout * 1000)} " \
                                      f"{given}".strip()
        elif backend == "sqlite":
            connect_args["timeout"] = timeout
        elif backend in ("mysql", "mariadb") and driver in MYSQL_DRIVERS:  # not tested here
            connect_args.update(dict.fromkeys(("connect_timeout", "read_timeout", "write_timeout"),
                                              max(1, math.ceil(timeout))))
        if backend == "sqlite" and not url.database:
            raise PermanentError("url: an in-memory SQLite database is not kept")
        engine = create_engine(url, pool_size=self.max_concurrency, max_overflow=0,
                               pool_timeout=timeout, pool_pre_ping=True, hide_parameters=True,
                               connect_args=connect_args)
        if backend == "sqlite":
            _sqlite_transactions(engine, url, event)
        return engine


def _sqlite_transactions(engine: Engine, url: URL, event: Any) -> None:
    """pysqlite begins transactions by itself, and not before every statement (DDL runs
    outside); SQLAlchemy's recipe takes that over, here with BEGIN IMMEDIATE. A file
    the relay creates is owner-only (it will hold notes)."""
    private = _sqlite_file(url)

    @event.listens_for(engine, "do_connect")
    def _create_private(dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
        if private:  # an existing file is left as its owner made it; a missing folder
            with contextlib.suppress(OSError):  # is for connecting to report
                os.close(os.open(str(url.database), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
