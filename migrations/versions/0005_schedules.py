"""Schedules (periodic jobs), and the schedule that made each job.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("args", JSON_DOCUMENT, nullable=False),
        sa.Column("cron", sa.String(200), nullable=True),
        sa.Column("every_seconds", sa.Integer(), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("priority", sa.String(8), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
        sa.CheckConstraint(
            "priority IN ('high', 'normal', 'low')", name="ck_schedules_priority"
        ),
        sa.CheckConstraint(
            "(cron IS NULL) <> (every_seconds IS NULL)", name="ck_schedules_one_timing"
        ),
        sa.UniqueConstraint("client_id", "name", name="uq_schedules_client_name"),
    )
    op.create_index(
        "ix_schedules_next_run_at",
        "schedules",
        ["next_run_at"],
        postgresql_where=sa.text("next_run_at IS NOT NULL"),
        sqlite_where=sa.text("next_run_at IS NOT NULL"),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("schedule", sa.String(100), nullable=True))
    op.create_index(
        "ix_jobs_client_schedule_created", "jobs", ["client_id", "schedule", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_client_schedule_created", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("schedule")
    op.drop_index("ix_schedules_next_run_at", table_name="schedules")
    op.drop_table("schedules")
