"""policy engine: cluster_policies, policy_host_states, policy_balloons; hosts.ksm_saved_mib

Revision ID: 0025_policies
Revises: 0024_job_owner
Create Date: 2026-12-06 20:10:00

Each cluster's policies (validated JSON), what the engine did to hosts (standby, KSM settings pushed) and the balloon
targets it set on idle desktops (issue 19); the memory KSM saves on each host, from its heartbeat.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from manager.models.base import UTCDateTime

revision = '0025_policies'
down_revision = '0024_job_owner'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_policies",
        sa.Column("cluster_id", sa.String(36), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"], name=op.f("fk_cluster_policies_cluster_id_clusters"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("cluster_id", name=op.f("pk_cluster_policies")),
    )
    op.create_table(
        "policy_host_states",
        sa.Column("host_id", sa.String(36), nullable=False),
        sa.Column("power", sa.String(16), nullable=False),
        sa.Column("power_since", UTCDateTime(), nullable=True),
        sa.Column("ksm_applied", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_policy_host_states_host_id_hosts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("host_id", name=op.f("pk_policy_host_states")),
    )
    op.create_table(
        "policy_balloons",
        sa.Column("desktop_id", sa.String(36), nullable=False),
        sa.Column("target_mib", sa.Integer(), nullable=False),
        sa.Column("set_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["desktop_id"], ["desktops.id"], name=op.f("fk_policy_balloons_desktop_id_desktops"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("desktop_id", name=op.f("pk_policy_balloons")),
    )
    op.add_column("hosts", sa.Column("ksm_saved_mib", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("hosts", "ksm_saved_mib")
    op.drop_table("policy_balloons")
    op.drop_table("policy_host_states")
    op.drop_table("cluster_policies")
