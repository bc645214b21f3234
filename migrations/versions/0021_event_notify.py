"""events: a statement trigger NOTIFYs vdi_events with the newest id of each INSERT (Postgres only)

Revision ID: 0021_event_notify
Revises: 0020_notifications
Create Date: 2026-12-06 17:15:00

Issue 17 item 4: the event streams (manager/api/event_stream.py) LISTEN instead of polling. NOTIFY is delivered at
commit and not at all on rollback; the payload is an id only, never the event: the newest id of each INSERT
statement (a statement trigger, so a multi-row INSERT notifies once).
"""
from __future__ import annotations

from alembic import op


revision = '0021_event_notify'
down_revision = '0020_notifications'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE FUNCTION vdi_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('vdi_events', (SELECT max(id) FROM new_events)::text);
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE TRIGGER events_notify AFTER INSERT ON events REFERENCING NEW TABLE AS new_events
        FOR EACH STATEMENT EXECUTE FUNCTION vdi_events_notify()""")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER events_notify ON events")
    op.execute("DROP FUNCTION vdi_events_notify()")
