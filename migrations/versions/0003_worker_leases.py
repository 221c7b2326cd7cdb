"""Worker leases: the processes that run attempts, and the lease each attempt runs under.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_leases",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("pool", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_worker_leases"),
    )
    op.create_index("ix_worker_leases_expires_at", "worker_leases", ["expires_at"])
    with op.batch_alter_table("job_attempts") as batch:
        batch.add_column(sa.Column("lease", sa.String(64), nullable=True))
    op.create_index(
        "ix_job_attempts_running_lease",
        "job_attempts",
        ["lease"],
        postgresql_where=sa.text("outcome = 'running'"),
        sqlite_where=sa.text("outcome = 'running'"),
    )


def downgrade() -> None:
    op.drop_index("ix_job_attempts_running_lease", table_name="job_attempts")
    with op.batch_alter_table("job_attempts") as batch:
        batch.drop_column("lease")
    op.drop_index("ix_worker_leases_expires_at", table_name="worker_leases")
    op.drop_table("worker_leases")
