"""planner: planner_runs and planner_samples

Revision ID: 0026_planner_runs
Revises: 0025_policies
Create Date: 2026-12-06 19:45:00

Issue 20: the planner's runs (profile, summary) and every operation measured in them (guest-side and client-side
seconds), stored by POST /api/v1/planner/runs and read back for the report and the JSON and CSV exports.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from manager.models.base import UTCDateTime

revision = '0026_planner_runs'
down_revision = '0025_policies'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "planner_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("users", sa.Integer(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
    )
    op.create_table(
        "planner_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("planner_runs.id", ondelete="CASCADE",
                                                         name="fk_planner_samples_run_id_planner_runs"),
                  nullable=False),
        sa.Column("users", sa.Integer(), nullable=False),
        sa.Column("desktop", sa.String(255), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("app", sa.String(32), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("group", sa.String(1), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("started_s", sa.Float(), nullable=False),
        sa.Column("guest_s", sa.Float(), nullable=True),
        sa.Column("client_s", sa.Float(), nullable=True),
        sa.Column("end_mark_seen", sa.Boolean(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
    )
    op.create_index("ix_planner_samples_run_id", "planner_samples", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_planner_samples_run_id", table_name="planner_samples")
    op.drop_table("planner_samples")
    op.drop_table("planner_runs")
