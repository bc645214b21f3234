"""desktops: leave room on each page so the heartbeat's figure updates are HOT

Revision ID: 0005_desktops_fillfactor
Revises: 0004_broker_free_pick
Create Date: 2026-11-22 07:30:00

Every heartbeat rewrites cpu_usage and mem_usage of every running desktop (5,000 rows every few seconds at 50
hosts). Neither column is indexed, so Postgres can update in place on the same page (a heap-only tuple: no entry
in any of the table's indexes, trigram GIN ones included) as long as the page has room; at the default fillfactor
of 100 it has none, and every update wrote a new entry into every index. Postgres only; SQLite has no such setting.
"""
from __future__ import annotations

from alembic import op

revision = '0005_desktops_fillfactor'
down_revision = '0004_broker_free_pick'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE desktops SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE desktops RESET (fillfactor)")
