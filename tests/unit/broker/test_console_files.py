"""Console tickets and files: random passwords, .vv (virt-viewer INI) and .rdp rendering, no injection."""
from __future__ import annotations

import configparser
import datetime as dt

import pytest

from broker.console import ConsoleDescriptor, new_ticket_password, render_file, render_rdp, render_vv
from core.enums import Protocol


def spice(**kw) -> ConsoleDescriptor:
    values = dict(protocol=Protocol.SPICE, host="192.0.2.10", port=5901, desktop_id="d-1", desktop_name="eng-001",
                  password="s3cret-Ticket", expires_at=dt.datetime(2026, 11, 22, 10, 2, tzinfo=dt.timezone.utc))
    values.update(kw)
    return ConsoleDescriptor(**values)


def parse_ini(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    assert parser.sections() == ["virt-viewer"]
    return dict(parser["virt-viewer"])


def test_ticket_passwords_are_random_and_long_enough():
    tickets = {new_ticket_password() for _ in range(200)}
    assert len(tickets) == 200
    assert all(len(t) >= 24 and t.isascii() and "\n" not in t for t in tickets)
    # VNC sees only the first 8 characters: those must differ too
    assert len({t[:8] for t in tickets}) == 200


def test_vv_file_has_what_remote_viewer_needs():
    vv = parse_ini(render_vv(spice()))
    assert vv["type"] == "spice" and vv["host"] == "192.0.2.10" and vv["port"] == "5901"
    assert vv["password"] == "s3cret-Ticket"
    assert vv["delete-this-file"] == "1"
    assert vv["secure-attention"] == "ctrl+alt+end"
    assert vv["toggle-fullscreen"] == "shift+f11" and vv["release-cursor"] == "shift+f12"
    assert vv["title"].startswith("eng-001")


def test_vv_for_vnc_and_tls_port():
    vv = parse_ini(render_vv(spice(protocol=Protocol.VNC, port=5902, tls_port=None)))
    assert vv["type"] == "vnc" and "enable-usbredir" not in vv
    assert parse_ini(render_vv(spice(tls_port=5903)))["tls-port"] == "5903"


def test_a_value_cannot_inject_keys_into_the_vv_file():
    vv = parse_ini(render_vv(spice(desktop_name="x\nhost=evil.example\n[other]", host="h\nport=1")))
    assert vv["host"] == "h port=1"
    assert vv["port"] == "5901"
    assert "evil.example" not in vv.get("host", "")


def test_rdp_file_without_any_ticket():
    desc = ConsoleDescriptor(Protocol.RDP, "10.1.2.3", 3389, "d-2", "win-007", username="alice", password="nope")
    text = render_rdp(desc)
    lines = text.split("\r\n")
    assert "full address:s:10.1.2.3:3389" in lines
    assert "username:s:alice" in lines
    assert "nope" not in text


def test_render_file_picks_the_format_and_a_safe_name():
    assert render_file(spice(desktop_name="eng/../001"))[:2] == ("eng_.._001.vv", "application/x-virt-viewer")
    name, media, _ = render_file(ConsoleDescriptor(Protocol.RDP, "h", None, "d", "win-1"))
    assert (name, media) == ("win-1.rdp", "application/x-rdp")
    with pytest.raises(ValueError):
        render_rdp(spice())
    with pytest.raises(ValueError):
        render_vv(ConsoleDescriptor(Protocol.RDP, "h", 3389, "d", "w"))


def test_repr_hides_the_password():
    assert "s3cret" not in repr(spice())


def test_vv_has_no_smartcard_hotkeys_remote_viewer_11_aborts_on():
    """Debian 12's remote-viewer 11.0 dies with "free(): double free" on smartcard-insert/-remove (issue 21)."""
    vv = parse_ini(render_vv(spice()))
    assert not [key for key in vv if key.startswith("smartcard-")]


def test_vv_names_the_proxy_for_spice():
    assert parse_ini(render_vv(spice(proxy="http://proxy.example:3128")))["proxy"] == "http://proxy.example:3128"
    assert "proxy" not in parse_ini(render_vv(spice()))


def test_vv_carries_the_ca_as_one_escaped_line_with_tls():
    pem = "-----BEGIN CERTIFICATE-----\nMIIBabc\n-----END CERTIFICATE-----\n"
    text = render_vv(spice(tls_port=5903, ca=pem, host_subject="CN=host1"))
    vv = parse_ini(text)
    assert vv["ca"] == pem.replace("\n", "\\n")  # GKeyFile turns \n back into newlines
    assert vv["host-subject"] == "CN=host1" and vv["tls-port"] == "5903"
    assert "port" not in vv  # the CA lets the client check the host: no channel goes in the clear
    assert "ca" not in parse_ini(render_vv(spice(ca=pem)))  # no TLS port: no CA either
