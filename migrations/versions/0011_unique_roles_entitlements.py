"""identity: a role assignment or an entitlement exists once

Revision ID: 0011_unique_roles_entitlements
Revises: 0010_portal_preferences
Create Date: 2026-12-06 14:40:00

The unique constraints over (user_id, group_id, role) and (user_id, group_id, pool_id, desktop_id) never fired:
two of their columns are always NULL and NULLs are distinct, so the same role or entitlement could be created
many times (50 concurrent identical POSTs, 50 rows), and deleting one left another in force. They are replaced by
partial unique indexes, one per principal kind (and target kind), the same on Postgres and SQLite (declared on the
models, manager/models/identity.py). Existing duplicates are removed first, keeping one of each: a manual row
before a directory-made one (the directory sync adds no row where a manual one exists), then the oldest.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011_unique_roles_entitlements'
down_revision = '0010_portal_preferences'
branch_labels = None
depends_on = None

ROLE_INDEXES = [("uq_role_assignments_user_role", ["user_id", "role"], "user_id IS NOT NULL"),
                ("uq_role_assignments_group_role", ["group_id", "role"], "group_id IS NOT NULL")]
ENTITLEMENT_INDEXES = [(f"uq_entitlements_{who}_{target}", [f"{who}_id", f"{target}_id"],
                        f"{who}_id IS NOT NULL AND {target}_id IS NOT NULL")
                       for who in ("user", "group") for target in ("pool", "desktop")]


def _drop_duplicates(table: str, key: str) -> None:
    op.execute(sa.text(f"""
        DELETE FROM {table} WHERE id IN (
            SELECT id FROM (
                SELECT id, row_number() OVER (PARTITION BY {key}
                                              ORDER BY CASE WHEN source = 'directory' THEN 1 ELSE 0 END,
                                                       created_at, id) AS n
                FROM {table}) AS ranked
            WHERE n > 1)"""))


def upgrade() -> None:
    _drop_duplicates("role_assignments", "user_id, group_id, role")
    _drop_duplicates("entitlements", "user_id, group_id, pool_id, desktop_id")
    with op.batch_alter_table("role_assignments") as batch:
        batch.drop_constraint("uq_role_assignments_user_id_group_id_role", type_="unique")
    with op.batch_alter_table("entitlements") as batch:
        batch.drop_constraint("uq_entitlements_user_id_group_id_pool_id_desktop_id", type_="unique")
    for table, indexes in (("role_assignments", ROLE_INDEXES), ("entitlements", ENTITLEMENT_INDEXES)):
        for name, columns, where in indexes:
            op.create_index(name, table, columns, unique=True, postgresql_where=sa.text(where),
                            sqlite_where=sa.text(where))


def downgrade() -> None:
    for table, indexes in (("role_assignments", ROLE_INDEXES), ("entitlements", ENTITLEMENT_INDEXES)):
        for name, _columns, _where in indexes:
            op.drop_index(name, table_name=table)
    with op.batch_alter_table("role_assignments") as batch:
        batch.create_unique_constraint("uq_role_assignments_user_id_group_id_role", ["user_id", "group_id", "role"])
    with op.batch_alter_table("entitlements") as batch:
        batch.create_unique_constraint("uq_entitlements_user_id_group_id_pool_id_desktop_id",
                                       ["user_id", "group_id", "pool_id", "desktop_id"])
