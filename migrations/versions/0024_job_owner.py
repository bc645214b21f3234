"""jobs: the owner of a running job (the manager instance or worker process running it)

Revision ID: 0024_job_owner
Revises: 0023_manager_highest_epoch
Create Date: 2026-12-06 20:00:00

jobs.owner names the runner that claimed a RUNNING job; with jobs.heartbeat_at (its lease, renewed by that runner
on the database's clock) it lets the job recovery settle only jobs whose runner is gone, and say which one was.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0024_job_owner'
down_revision = '0023_manager_highest_epoch'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("owner", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("jobs", "owner")
