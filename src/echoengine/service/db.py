"""The service's database: an engine for any SQLAlchemy URL, its migrations, and sessions.

SQLite (the default, one file in the store folder) runs in WAL mode with a
busy timeout, so the HTTP threads and the worker read and write at once;
PostgreSQL is reached by its URL (``postgresql+psycopg://user@host/db``).
The schema is brought up to date by Alembic at start-up
(:meth:`Database.migrate`), from the migrations shipped inside the package.

Examples
--------
>>> from echoengine.service.schema import Sensor
>>> db = Database.connect("sqlite://")  # in memory
>>> db.migrate()
'0004'
>>> with db.session() as session:
...     session.query(Sensor).count()
0
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from echoengine.errors import EchoError

__all__ = ["DB_FILE", "Database", "default_url"]

#: The SQLite file in the store folder when no ``--db`` URL is given.
DB_FILE = "echo.db"
_MIGRATIONS = "echoengine.service:migrations"
_IMMEDIATE = "echoengine_write"


def default_url(store: str | Path) -> str:
    """The SQLite URL of ``store``'s database file.

    Examples
    --------
    >>> default_url("/data/echo")
    'sqlite:////data/echo/echo.db'
    """
    return f"sqlite:///{Path(store).resolve() / DB_FILE}"


def _sqlite_settings(connection, _record) -> None:
    """Foreign keys on, WAL (readers never block the writer), waiting for a lock instead of failing, and
    transactions begun by :func:`_sqlite_begin` rather than by the driver."""
    cursor = connection.cursor()
    for pragma in ("foreign_keys = ON", "journal_mode = WAL", "busy_timeout = 30000", "synchronous = NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
    connection.isolation_level = None


def _sqlite_begin(connection) -> None:
    """``BEGIN IMMEDIATE`` for a write (:meth:`Database.transaction`): it waits for the write lock up front,
    where a read that turns into a write would fail at once if another writer committed meanwhile."""
    immediate = connection.get_execution_options().get(_IMMEDIATE)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """An engine and its sessions; ``queued`` is set whenever a recording joins the queue (it wakes the worker).

    Parameters
    ----------
    engine : Engine
        The SQLAlchemy engine (see :meth:`connect`).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.queued = threading.Event()

    @classmethod
    def connect(cls, url: str) -> Database:
        """A database at ``url`` (any SQLAlchemy URL); an EchoError when the URL is not one.

        Examples
        --------
        >>> Database.connect("nosuchdb://x")
        Traceback (most recent call last):
        ...
        echoengine.errors.EchoError: --db nosuchdb://x: not a database URL SQLAlchemy can use (...); e.g. ...
        """
        try:
            parsed = make_url(url)
            sqlite = parsed.get_backend_name() == "sqlite"
            memory = sqlite and parsed.database in (None, "", ":memory:")
            engine = create_engine(url, pool_pre_ping=not sqlite,
                                   **({"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
                                      if memory else {}))
        except (ArgumentError, ImportError) as exc:
            raise EchoError(f"--db {url}: not a database URL SQLAlchemy can use ({exc}); e.g. "
                            "sqlite:///path/echo.db or postgresql+psycopg://user@host/dbname") from None
        if sqlite:
            event.listen(engine, "connect", _sqlite_settings)
            event.listen(engine, "begin", _sqlite_begin)
        return cls(engine)

    def migrate(self) -> str:
        """Bring the schema up to the newest migration (creating it in an empty database); its revision."""
        config = Config()
        config.set_main_option("script_location", _MIGRATIONS)
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            with self.engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision()
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise EchoError(f"--db {self.engine.url.render_as_string(hide_password=True)}: cannot open the "
                            f"database ({reason})") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session to read with, closed at the end of the block."""
        with self.sessions() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in a write transaction: committed at the end of the block, rolled back on an exception."""
        with self.sessions() as session, session.begin():
            session.connection(execution_options={_IMMEDIATE: True})
            yield session

    def dispose(self) -> None:
        """Close the engine's connections."""
        self.engine.dispose()
