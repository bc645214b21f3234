from __future__ import annotations


def make_desktop(name: str) -> tuple[str, str]:
    """A host and a desktop on it (rows only); returns their ids."""
    from manager import db
    from manager.models import Cluster, Desktop, Host

    with db.session_scope() as session:
        cluster = Cluster(name=f"{name}-cluster")
        session.add(cluster)
        session.flush()
        host = Host(name=f"{name}-host", address="127.0.0.1", cluster_id=cluster.id)
        session.add(host)
        session.flush()
        desktop = Desktop(name=name, host_id=host.id)
        session.add(desktop)
        session.flush()
        return host.id, desktop.id
