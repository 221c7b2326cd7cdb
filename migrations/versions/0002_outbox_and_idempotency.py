"""The outbox columns (publish_after, published_at) and the request fingerprint.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("request_fingerprint", sa.String(64), nullable=True))
        batch.add_column(sa.Column("publish_after", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_client_status", "jobs", ["client_id", "status"])
    op.create_index(
        "ix_jobs_publish_after",
        "jobs",
        ["publish_after"],
        postgresql_where=sa.text("publish_after IS NOT NULL"),
        sqlite_where=sa.text("publish_after IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_publish_after", table_name="jobs")
    op.drop_index("ix_jobs_client_status", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("published_at")
        batch.drop_column("publish_after")
        batch.drop_column("request_fingerprint")
