"""Where the `vdi` commands and scripts find the manager: VDI_URL and VDI_TOKEN, else the config file
(~/.config/vdi/config.toml, or $XDG_CONFIG_HOME/vdi/config.toml; VDI_CONFIG names another), which `vdi login`
writes, readable by its owner only (0600)."""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from vdi_client.errors import VdiClientError


class NotConfigured(VdiClientError):
    """Neither the environment nor the config file says which manager to talk to, or with which token."""


@dataclass(frozen=True)
class Settings:
    url: str
    token: str | None


def config_path() -> Path:
    if os.environ.get("VDI_CONFIG"):
        return Path(os.environ["VDI_CONFIG"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "vdi" / "config.toml"


def load(url: str | None = None, token: str | None = None) -> Settings:
    """The manager's URL and the token: the given ones, else VDI_URL / VDI_TOKEN, else the config file's."""
    stored: dict[str, object] = {}
    path = config_path()
    if path.exists():
        try:
            stored = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise NotConfigured(f"{path} is not valid TOML: {exc}") from None
    url = url or os.environ.get("VDI_URL") or str(stored.get("url") or "")
    token = token or os.environ.get("VDI_TOKEN") or (str(stored["token"]) if stored.get("token") else None)
    if not url:
        raise NotConfigured("no manager configured: set VDI_URL (and VDI_TOKEN), or run `vdi login --url URL`")
    return Settings(url=url, token=token)


def save(url: str, token: str) -> Path:
    """Write the config file, 0600 (it holds a token), its directory 0700."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # JSON's string escapes are valid TOML basic strings
    text = f"url = {json.dumps(url)}\ntoken = {json.dumps(token)}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # an older file may have had a wider mode
        out.write(text)
    return path
