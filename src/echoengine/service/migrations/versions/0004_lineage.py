"""Detections of a model of a taxonomy: ``detections.lineage``, the event's name and score at every rank.

A model whose classes have a taxonomy (its bundle's ``taxonomy.csv``) gives
each detection its lineage, ``{"family": {"label": ..., "score": ...}, ...,
"label": {...}}``; the detections of other models (and those stored before
this revision) have none.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``detections.lineage`` (NULL: a model without a taxonomy)."""
    with op.batch_alter_table("detections") as batch:
        batch.add_column(sa.Column("lineage", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop ``detections.lineage``."""
    with op.batch_alter_table("detections") as batch:
        batch.drop_column("lineage")
