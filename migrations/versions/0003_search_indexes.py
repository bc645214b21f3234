"""search indexes: trigram GIN (pg_trgm) for ILIKE wildcards and free text, event severity order, desktop page order

Revision ID: 0003_search_indexes
Revises: 0002_role_source
Create Date: 2026-11-22 06:00:00

Declared on the models in manager/models/search_indexes.py. On SQLite the GIN indexes are plain indexes (SQLite
has no GIN); they exist there too so that models and migrations are the same on both backends.
"""
from __future__ import annotations

from alembic import op


revision = '0003_search_indexes'
down_revision = '0002_role_source'
branch_labels = None
depends_on = None

COLUMNS = ["name", "comment", "description", "ip", "guest_hostname", "logged_in_user"]
DESKTOP_TEXT = COLUMNS[0]
for _column in COLUMNS[1:]:
    DESKTOP_TEXT = f"(({DESKTOP_TEXT} || '\x1f') || {_column})"
SEVERITIES = "'normal warning error alert'"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_index("ix_desktops_name_trgm", "desktops", ["name"], postgresql_using="gin",
                    postgresql_ops={"name": "gin_trgm_ops"})
    op.create_index("ix_users_username_trgm", "users", ["username"], postgresql_using="gin",
                    postgresql_ops={"username": "gin_trgm_ops"})
    if postgres:
        op.execute(f"CREATE INDEX ix_desktops_text_trgm ON desktops USING gin ({DESKTOP_TEXT} gin_trgm_ops)")
        op.execute(f"CREATE INDEX ix_events_severity_code ON events (strpos({SEVERITIES}, severity))")
    else:
        op.execute(f"CREATE INDEX ix_desktops_text_trgm ON desktops ({DESKTOP_TEXT})")
        op.execute(f"CREATE INDEX ix_events_severity_code ON events (instr({SEVERITIES}, severity))")
    op.create_index("ix_desktops_name_id", "desktops", ["name", "id"])


def downgrade() -> None:
    op.drop_index("ix_desktops_name_id", table_name="desktops")
    op.drop_index("ix_events_severity_code", table_name="events")
    op.drop_index("ix_desktops_text_trgm", table_name="desktops")
    op.drop_index("ix_users_username_trgm", table_name="users")
    op.drop_index("ix_desktops_name_trgm", table_name="desktops")
    # pg_trgm stays: dropping an extension another object may use is not this revision's call
