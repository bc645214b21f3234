"""The host's SPICE TLS files, as libvirt's qemu.conf `spice_tls_x509_cert_dir` expects them: ca-cert.pem,
server-cert.pem and server-key.pem. The manager issues them (manager/console_tls.py) and sends them here
(PUT /v1/spice-tls); QEMU reads them when a guest starts, so no libvirtd restart is needed. The key is 0600 and
owned by the user QEMU runs as (libvirt-qemu on Debian, when it exists)."""
from __future__ import annotations

import os
import pwd
from pathlib import Path

from core.errors import Conflict, Invalid

QEMU_USER = "libvirt-qemu"
_PEM = {"ca_cert": ("ca-cert.pem", "CERTIFICATE", 0o644), "server_cert": ("server-cert.pem", "CERTIFICATE", 0o644),
        "server_key": ("server-key.pem", "PRIVATE KEY", 0o600)}


def install(directory: str | None, files: dict[str, object]) -> list[str]:
    """Write the three PEM files atomically into `directory`; returns their names. Conflict when the node has no
    directory configured (--spice-tls-dir), Invalid for a missing or malformed PEM."""
    if not directory:
        raise Conflict("this node has no SPICE TLS directory: start its agent with --spice-tls-dir (the directory "
                       "its qemu.conf's spice_tls_x509_cert_dir names)")
    target = Path(directory)
    target.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        owner = pwd.getpwnam(QEMU_USER)
    except KeyError:
        owner = None
    written = []
    for field, (name, kind, mode) in _PEM.items():
        text = files.get(field)
        if not isinstance(text, str) or "-----BEGIN " not in text or kind not in text or len(text) > 65536:
            raise Invalid(f"{field} must be a PEM {kind.lower()}")
        spare = target / f".{name}.new"
        fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), mode)
            if owner is not None and mode == 0o600 and os.geteuid() == 0:
                os.fchown(fh.fileno(), owner.pw_uid, owner.pw_gid)
            fh.write(text)
        os.replace(spare, target / name)
        written.append(name)
    return written
