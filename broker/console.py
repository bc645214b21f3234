"""Console tickets and the files a client opens: virt-viewer's .vv (SPICE/VNC) and Microsoft's .rdp.

A ticket is a random one-time password for ONE desktop's display, valid for a short time (VDI_TICKET_SECONDS,
120 s by default); the node sets it on the domain (passwdValidTo), so an expired ticket opens nothing.
The password appears only in the descriptor handed to the user who asked: never in logs or events
(ConsoleDescriptor's repr hides it).
"""
from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass, field

from core.enums import Protocol

# SPICE accepts long passwords; VNC uses the first 8 characters only, so the first 8 carry ~48 bits alone.
TICKET_BYTES = 18  # 24 URL-safe characters
RDP_PORT = 3389

# virt-viewer hotkeys: the ones users need to leave a full-screen console. No smartcard-insert/-remove: Debian 12's
# remote-viewer 11.0 aborts on them ("free(): double free", exit 134) before it connects.
HOTKEYS = {
    "toggle-fullscreen": "shift+f11",
    "release-cursor": "shift+f12",
    "secure-attention": "ctrl+alt+end",
}


def new_ticket_password() -> str:
    """A fresh random console password (secrets, URL-safe, 24 characters)."""
    return secrets.token_urlsafe(TICKET_BYTES)


@dataclass
class ConsoleDescriptor:
    """Everything a client needs to open one desktop's console."""

    protocol: Protocol
    host: str
    port: int | None
    desktop_id: str
    desktop_name: str
    password: str | None = field(default=None, repr=False)
    expires_at: dt.datetime | None = None
    tls_port: int | None = None
    username: str = ""
    title: str = ""
    fullscreen: bool = False
    usb_redirect: bool = True
    proxy: str = ""  # SPICE through an HTTP CONNECT proxy, e.g. http://proxy:3128
    ca: str = ""  # PEM of the CA that signed the host's SPICE TLS certificate (with tls_port)
    host_subject: str = ""  # the subject the host's certificate must carry, e.g. "CN=host1"

    def to_dict(self) -> dict:
        return {"protocol": self.protocol.value, "host": self.host, "port": self.port, "tls_port": self.tls_port,
                "password": self.password, "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                "desktop_id": self.desktop_id, "desktop_name": self.desktop_name, "username": self.username,
                "title": self.title or self.desktop_name, "proxy": self.proxy}


def _ini_value(value: object) -> str:
    """One line, no control characters: a value must not be able to start a new key or section."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", str(value))


def _keyfile_string(value: str) -> str:
    """A multi-line value as one GKeyFile string (virt-viewer reads the .vv with GKeyFile): escapes, no newline."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "")


def render_vv(desc: ConsoleDescriptor) -> str:
    """virt-viewer / remote-viewer connection file ([virt-viewer] INI) for SPICE or VNC."""
    if desc.protocol not in (Protocol.SPICE, Protocol.VNC):
        raise ValueError(f"a .vv file describes SPICE or VNC, not {desc.protocol.value}")
    title = desc.title or desc.desktop_name
    lines = ["[virt-viewer]", f"type={desc.protocol.value}", f"host={_ini_value(desc.host)}"]
    tls_only = desc.tls_port is not None and bool(desc.ca)  # with a CA to check the host by, every channel is TLS
    if desc.port is not None and not tls_only:
        lines.append(f"port={int(desc.port)}")
    if desc.tls_port is not None:
        lines.append(f"tls-port={int(desc.tls_port)}")
        if desc.ca:
            lines.append(f"ca={_keyfile_string(desc.ca)}")
        if desc.host_subject:
            lines.append(f"host-subject={_ini_value(desc.host_subject)}")
    if desc.password is not None:
        lines.append(f"password={_ini_value(desc.password)}")
    lines += [
        f"title={_ini_value(title)} - press SHIFT+F12 to release the cursor",
        "delete-this-file=1",
        f"fullscreen={1 if desc.fullscreen else 0}",
    ]
    lines += [f"{key}={value}" for key, value in HOTKEYS.items()]
    if desc.protocol == Protocol.SPICE:
        lines += [f"enable-usbredir={1 if desc.usb_redirect else 0}", "enable-smartcard=0",
                  "enable-usb-autoshare=1"]
        if desc.proxy:
            lines.append(f"proxy={_ini_value(desc.proxy)}")
    return "\n".join(lines) + "\n"


def render_rdp(desc: ConsoleDescriptor) -> str:
    """A Microsoft .rdp file. RDP authenticates with the user's Windows credentials: no ticket inside."""
    if desc.protocol != Protocol.RDP:
        raise ValueError(f"an .rdp file describes RDP, not {desc.protocol.value}")
    port = desc.port or RDP_PORT
    lines = [
        f"full address:s:{_ini_value(desc.host)}:{int(port)}",
        f"username:s:{_ini_value(desc.username)}",
        "prompt for credentials:i:1",
        f"screen mode id:i:{2 if desc.fullscreen else 1}",
        "use multimon:i:0",
        "redirectclipboard:i:1",
        "redirectprinters:i:0",
        "audiomode:i:0",
        "authentication level:i:2",
        "autoreconnection enabled:i:1",
        "alternate shell:s:",
        "session bpp:i:32",
    ]
    return "\r\n".join(lines) + "\r\n"


def render_file(desc: ConsoleDescriptor) -> tuple[str, str, str]:
    """(file name, media type, content) of the file that opens this console."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", desc.desktop_name) or "desktop"
    if desc.protocol == Protocol.RDP:
        return f"{safe}.rdp", "application/x-rdp", render_rdp(desc)
    return f"{safe}.vv", "application/x-virt-viewer", render_vv(desc)
