"""The first schema: sensors, models, recordings (the queue), detections and reviews.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the five tables and their indexes."""
    op.create_table(
        "sensors",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("lat", sa.Float()), sa.Column("lon", sa.Float()), sa.Column("alt", sa.Float()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime()),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("weights_hash", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_models_name_version"),
    )
    _recordings()
    _detections()
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("detection_id", sa.Integer(), sa.ForeignKey("detections.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("species", sa.String(200)),
        sa.Column("reviewer", sa.String(100), nullable=False),
        sa.Column("comment", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("status IN ('confirmed', 'rejected', 'uncertain')", name="ck_reviews_status"),
    )
    op.create_index("ix_reviews_detection_id", "reviews", ["detection_id"])


def _recordings() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("audio", sa.String(200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sensor_id", sa.String(128), sa.ForeignKey("sensors.id")),
        sa.Column("recorded_at", sa.DateTime()),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("lat", sa.Float()), sa.Column("lon", sa.Float()), sa.Column("alt", sa.Float()),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("sample_rate", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id")),
        sa.Column("started_at", sa.DateTime()),
        sa.Column("finished_at", sa.DateTime()),
        sa.CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name="ck_recordings_status"),
    )
    op.create_index("ix_recordings_status", "recordings", ["status", "id"])


def _detections() -> None:
    op.create_table(
        "detections",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("recording_id", sa.Integer(), sa.ForeignKey("recordings.id"), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("species", sa.Text(), nullable=False),
        sa.Column("start", sa.Float(), nullable=False),
        sa.Column("end", sa.Float(), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("mean_score", sa.Float(), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("top_species", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("recording_id", "model_id", "species", "start", name="uq_detections_event"),
    )
    op.create_index("ix_detections_time", "detections", ["time", "id"])
    op.create_index("ix_detections_species", "detections", ["species"])


def downgrade() -> None:
    """Drop the tables, newest first."""
    for table in ("reviews", "detections", "recordings", "models", "sensors"):
        op.drop_table(table)
