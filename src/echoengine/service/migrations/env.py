"""Alembic's environment: migrations run on the connection the service hands over, never from an ini file.

:func:`echoengine.service.db.Database.migrate` puts an open connection in
``config.attributes["connection"]``; SQLite gets batch mode, so that later
migrations may alter its tables (it cannot ``ALTER`` most things in place).
"""

from __future__ import annotations

from alembic import context

from echoengine.service.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run these migrations through echoengine.service.db.Database.migrate (it gives a connection)")
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
