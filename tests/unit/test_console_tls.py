"""SPICE TLS: the manager's CA (0600 in the data dir, made once) signs each host's certificate for its subject and
display address, and the node writes the three files libvirt's spice_tls_x509_cert_dir expects."""
from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509

from core.errors import Conflict, Invalid
from hypervisor_node import spice_tls
from manager import console_tls


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    from manager.config import get_settings

    monkeypatch.setenv("VDI_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    console_tls._ca.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()
    console_tls._ca.cache_clear()


def test_the_ca_is_made_once_and_kept_private(data_dir):
    first = console_tls.ca_certificate()
    path = data_dir / console_tls.CA_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in path.read_text()
    console_tls._ca.cache_clear()
    assert console_tls.ca_certificate() == first  # read back, not made again
    assert x509.load_pem_x509_certificate(first.encode()).extensions.get_extension_for_class(
        x509.BasicConstraints).value.ca


def test_a_host_certificate_is_signed_by_the_ca_for_its_subject_and_address(data_dir):
    cert_pem, key_pem = console_tls.host_certificate("vs-a,evil=1", ["198.18.0.1", "vs-a.example.com", ""])
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca = x509.load_pem_x509_certificate(console_tls.ca_certificate().encode())
    cert.verify_directly_issued_by(ca)
    assert console_tls.host_subject("vs-a,evil=1") == "CN=vs-a-evil-1" == cert.subject.rfc4514_string()
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["vs-a.example.com"]
    assert "PRIVATE KEY" in key_pem


def test_the_node_writes_the_files_libvirt_reads(data_dir, tmp_path):
    cert, key = console_tls.host_certificate("vs-a", ["198.18.0.1"])
    files = {"ca_cert": console_tls.ca_certificate(), "server_cert": cert, "server_key": key}
    target = tmp_path / "spice-tls"
    assert spice_tls.install(str(target), files) == ["ca-cert.pem", "server-cert.pem", "server-key.pem"]
    assert (target / "server-cert.pem").read_text() == cert
    assert stat.S_IMODE((target / "server-key.pem").stat().st_mode) == 0o600
    with pytest.raises(Invalid):
        spice_tls.install(str(target), dict(files, server_key="not a key"))
    with pytest.raises(Conflict):
        spice_tls.install(None, files)
