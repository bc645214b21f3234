"""SPICE over TLS (VDI_SPICE_TLS): a certificate authority the manager keeps, and a server certificate per host.

The CA's key and certificate live in one file, <data_dir>/spice-ca.pem, mode 0600 from its creation (made once, by
whichever manager process needs it first). Each host gets a certificate for subject CN=<host name> with its display
address as subjectAltName, signed by the CA, delivered to its node agent (PUT /v1/spice-tls), which writes the files
libvirt's `spice_tls_x509_cert_dir` (qemu.conf, with `spice_tls = 1`) names. A .vv for a display with a TLS port
carries the CA's certificate (`ca=`) and the subject the host's certificate must have (`host-subject=`), so the
client trusts that host and nothing else the CA did not sign.
"""
from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from manager.config import create_private_once, get_settings

CA_FILE = "spice-ca.pem"
CA_DAYS = 3650
HOST_DAYS = 825
KEY_BITS = 2048


def _ca_path() -> Path:
    return get_settings().data_dir / CA_FILE


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def _pem_key(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _new_ca() -> str:
    """A new CA's key and certificate (PEM, one after the other)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "VDI manager"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "VDI console CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return _pem_key(key) + _pem_cert(cert)


@functools.lru_cache(maxsize=4)
def _ca(path: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    create_private_once(path, _new_ca)  # 0600 from creation; of two processes making one, both keep the first
    data = path.read_bytes()
    key = serialization.load_pem_private_key(data, password=None)
    return key, x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE-----"):])


def ca_certificate() -> str:
    """The CA's certificate (PEM): what a .vv's ca= carries."""
    return _pem_cert(_ca(_ca_path())[1])


def host_subject(host_name: str) -> str:
    """The subject of a host's certificate, as virt-viewer's host-subject= names it."""
    return f"CN={_common_name(host_name)}"


def _common_name(host_name: str) -> str:
    # host-subject is "key=value,key=value": a name's commas or equals signs must not reach it
    return re.sub(r"[^A-Za-z0-9._-]", "-", host_name)[:64] or "host"


def host_certificate(host_name: str, addresses: list[str]) -> tuple[str, str]:
    """(certificate PEM, key PEM) for one host's displays: CN=<host name>, the addresses as subjectAltNames."""
    ca_key, ca_cert = _ca(_ca_path())
    key = _new_key()
    names: list[x509.GeneralName] = []
    for address in dict.fromkeys(a for a in addresses if a):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(host_name))]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=HOST_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _pem_cert(builder.sign(ca_key, hashes.SHA256())), _pem_key(key)
