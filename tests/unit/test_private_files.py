"""Secret files are 0600 from the moment they exist, and the data directory is 0711 (others traverse, never list)."""
from __future__ import annotations

import os
import stat

from manager.config import ensure_data_dir, write_private
from manager.db import make_engine


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_secret_file_is_0600_even_under_umask_0(tmp_path):
    old = os.umask(0)
    try:
        write_private(tmp_path / "data" / "admin-password", "pw\n")
    finally:
        os.umask(old)
    assert mode(tmp_path / "data" / "admin-password") == 0o600
    assert mode(tmp_path / "data") == 0o711


def test_an_older_world_readable_file_and_folder_are_closed(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    secret = data / "embedded-nodes.json"
    secret.write_text("old")
    secret.chmod(0o644)
    write_private(secret, "new")
    assert mode(secret) == 0o600 and secret.read_text() == "new"
    ensure_data_dir(data)
    assert mode(data) == 0o711


def test_the_sqlite_database_and_its_wal_are_0600(tmp_path):
    old = os.umask(0)
    try:
        engine = make_engine(f"sqlite:///{tmp_path / 'vdi.db'}")
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x TEXT)")
            conn.exec_driver_sql("INSERT INTO t VALUES ('secret')")
            names = {p.name for p in tmp_path.iterdir()}
            assert {"vdi.db", "vdi.db-wal", "vdi.db-shm"} <= names
            assert {p.name: mode(p) for p in tmp_path.iterdir()} == {n: 0o600 for n in names}
        engine.dispose()
    finally:
        os.umask(old)
