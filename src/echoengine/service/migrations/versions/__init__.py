"""The migration scripts, oldest first (Alembic reads them; nothing imports them)."""
