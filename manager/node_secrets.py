"""Node agents' tokens, kept so that reading the database does not yield them.

One token per host serves both directions: the node presents it in its heartbeats, the manager presents it when it
calls the node. The hosts table holds two columns and neither is the token:
- agent_token_sha256, its SHA-256: all the manager needs to VERIFY a node (heartbeats compare in constant time);
- agent_token_sealed, the token encrypted under the manager's node key (a file outside the database, 0600,
  VDI_NODE_KEY_FILE, default <data_dir>/node-key), which the manager opens only to CALL the node.
A copy of the database alone is worth nothing to a thief; the key file alone is too. Sealing is Fernet from the
`cryptography` package (AES-128-CBC with an HMAC-SHA256 tag, a fresh IV per seal): a reviewed library, not a cipher
of our own.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from core.errors import Unavailable

KEY_BYTES = 32


def digest(token: str) -> str:
    """The SHA-256 (hex) the database keeps to verify a node's token."""
    return hashlib.sha256(token.encode()).hexdigest()


def verify(presented: str, stored_digest: str) -> bool:
    """Does the token a node presented match the stored digest? (constant time; an empty digest matches nothing)"""
    return bool(stored_digest) and hmac.compare_digest(digest(presented), stored_digest)


def key_file() -> Path:
    from manager.config import get_settings

    return get_settings().effective_node_key_file


@functools.lru_cache(maxsize=4)
def _key(path: Path) -> bytes:
    """The node key at `path`, created (0600 from its creation, atomically: a concurrent creator's key wins) if
    missing."""
    from manager.config import create_private_once

    create_private_once(path, lambda: secrets.token_hex(KEY_BYTES) + "\n")
    return bytes.fromhex(path.read_text().strip())


def _fernet(path: Path) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(_key(path)))


def seal(token: str) -> str:
    """The token encrypted under the node key (a Fernet token: url-safe base64)."""
    return _fernet(key_file()).encrypt(token.encode()).decode()


def unseal(sealed: str, stored_digest: str, host: str) -> str:
    """The token back from its sealed form; NodeKeyMismatch if this manager's node key is not the one that sealed
    it (Unavailable: the manager cannot call that node). An empty seal is an empty token (a host without one)."""
    if not sealed:
        return ""
    path = key_file()
    try:
        token = _fernet(path).decrypt(sealed.encode()).decode()
    except (InvalidToken, ValueError, UnicodeDecodeError):  # another key, or not a sealed token at all
        token = ""
    if not verify(token, stored_digest):
        raise Unavailable(what=f"host {host}", reason=f"its node token was sealed with another node key than "
                          f"{path}; give the host its token again (PATCH /api/v1/hosts/<id> agent_token) or point "
                          "VDI_NODE_KEY_FILE at the key that sealed it")
    return token


def open_sealed(sealed: str, what: str) -> str:
    """A secret other than a node token (a fence agent's BMC password) back from seal(); Unavailable naming `what`
    when this manager's node key is not the one that sealed it. An empty seal is an empty secret."""
    if not sealed:
        return ""
    path = key_file()
    try:
        return _fernet(path).decrypt(sealed.encode()).decode()
    except (InvalidToken, ValueError, UnicodeDecodeError):
        raise Unavailable(what=what, reason=f"its secret was sealed with another node key than {path}; set it "
                          "again or point VDI_NODE_KEY_FILE at the key that sealed it") from None
