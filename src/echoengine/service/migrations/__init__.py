"""Alembic migrations of the service's database (run by :func:`echoengine.service.db.Database.migrate`)."""
