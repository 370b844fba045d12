"""Indexes of the review page's queries: the list's orders and filters, species counts, queue and precision.

Detections by score (``order=score``, score ranges), by species then time
(a species' newest or oldest first) and by species then score (a species by
score; its score bins for the queue and the precision estimate); recordings
by sensor (the sensor filter); reviews by detection then id (each
detection's latest review). The single-column species and review indexes of
0001 are covered by the new ones and dropped.

Revision ID: 0002
Revises: 0001
Create Date: 2026-02-01
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: (name, table, columns) of the indexes this revision adds.
INDEXES = (("ix_detections_score", "detections", ["score", "id"]),
           ("ix_detections_species_time", "detections", ["species", "time", "id"]),
           ("ix_detections_species_score", "detections", ["species", "score"]),
           ("ix_recordings_sensor", "recordings", ["sensor_id", "id"]),
           ("ix_reviews_detection_latest", "reviews", ["detection_id", "id"]))
#: (name, table, columns) of 0001's indexes that the new ones cover.
COVERED = (("ix_detections_species", "detections", ["species"]),
           ("ix_reviews_detection_id", "reviews", ["detection_id"]))


def upgrade() -> None:
    """Add the review indexes and drop the ones they cover."""
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)
    for name, table, _ in COVERED:
        op.drop_index(name, table_name=table)


def downgrade() -> None:
    """Back to 0001's indexes."""
    for name, table, columns in COVERED:
        op.create_index(name, table, columns)
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
