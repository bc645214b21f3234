"""hosts.agent_token (the node token in plain text) becomes agent_token_sha256 + agent_token_sealed

Revision ID: 0013_node_token_digest
Revises: 0012_token_parent
Create Date: 2026-12-06 15:10:00

Reading the database yielded every node agent's token. Now the manager keeps its SHA-256 (to verify heartbeats) and
the token sealed under the node key file (to call the node; VDI_NODE_KEY_FILE, default <data_dir>/node-key, created
0600 here if missing): see manager.node_secrets. Existing tokens are hashed and sealed, so the node agents keep their
configuration. The downgrade opens them back into the plain column (it needs the same key file).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013_node_token_digest'
down_revision = '0012_token_parent'
branch_labels = None
depends_on = None

hosts = sa.table("hosts", sa.column("id", sa.String), sa.column("name", sa.String),
                 sa.column("agent_token", sa.String), sa.column("agent_token_sha256", sa.String),
                 sa.column("agent_token_sealed", sa.String))


def upgrade() -> None:
    from manager.node_secrets import digest, seal

    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("agent_token_sha256", sa.String(length=64), nullable=False, server_default=""))
        batch.add_column(sa.Column("agent_token_sealed", sa.String(length=512), nullable=False, server_default=""))
    conn = op.get_bind()
    for host_id, token in conn.execute(sa.select(hosts.c.id, hosts.c.agent_token)).all():
        if token:
            conn.execute(hosts.update().where(hosts.c.id == host_id)
                         .values(agent_token_sha256=digest(token), agent_token_sealed=seal(token)))
    with op.batch_alter_table("hosts") as batch:
        batch.alter_column("agent_token_sha256", server_default=None)
        batch.alter_column("agent_token_sealed", server_default=None)
        batch.drop_column("agent_token")


def downgrade() -> None:
    from manager.node_secrets import unseal

    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("agent_token", sa.String(length=255), nullable=False, server_default=""))
    conn = op.get_bind()
    rows = conn.execute(sa.select(hosts.c.id, hosts.c.name, hosts.c.agent_token_sha256,
                                  hosts.c.agent_token_sealed)).all()
    for host_id, name, sha, sealed in rows:
        if sealed:
            conn.execute(hosts.update().where(hosts.c.id == host_id).values(agent_token=unseal(sealed, sha, name)))
    with op.batch_alter_table("hosts") as batch:
        batch.alter_column("agent_token", server_default=None)
        batch.drop_column("agent_token_sha256")
        batch.drop_column("agent_token_sealed")
