"""The store's active model: ``models.activated_at``, when a model last became the one new uploads are scored with.

The model whose ``activated_at`` is the latest is the store's active model
(:mod:`echoengine.service.activation`); a model never activated (a candidate
registered with ``serve --candidate``, or a row of a store older than this
revision) has none.

Revision ID: 0003
Revises: 0002
Create Date: 2026-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``models.activated_at`` (NULL: never activated)."""
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("activated_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    """Drop ``models.activated_at``."""
    with op.batch_alter_table("models") as batch:
        batch.drop_column("activated_at")
