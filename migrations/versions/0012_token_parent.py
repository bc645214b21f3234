"""api_tokens.parent_id: a token minted by a session (without the password again) dies with that session

Revision ID: 0012_token_parent
Revises: 0011_unique_roles_entitlements
Create Date: 2026-12-06 15:00:00

A logout deleted the session's token but not the API tokens the session had minted, which outlived it. The minted
token now names its parent (ON DELETE CASCADE). Tokens without an expiry need no data change: manager.auth bounds
every token's life from its creation by configuration (VDI_API_TOKEN_MAX_DAYS, VDI_SESSION_HOURS).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012_token_parent'
down_revision = '0011_unique_roles_entitlements'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(length=36), nullable=True))
        batch.create_index(batch.f("ix_api_tokens_parent_id"), ["parent_id"], unique=False)
        batch.create_foreign_key(batch.f("fk_api_tokens_parent_id_api_tokens"), "api_tokens", ["parent_id"], ["id"],
                                 ondelete="CASCADE")


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint(batch.f("fk_api_tokens_parent_id_api_tokens"), type_="foreignkey")
        batch.drop_index(batch.f("ix_api_tokens_parent_id"))
        batch.drop_column("parent_id")
