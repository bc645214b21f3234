"""role_assignments.source: tell the AD group -> role mapping's rows from manual ones

Revision ID: 0002_role_source
Revises: 0001
Create Date: 2026-11-22 04:30:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0002_role_source'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('role_assignments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=32), server_default='manual', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('role_assignments', schema=None) as batch_op:
        batch_op.drop_column('source')
