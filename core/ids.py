"""Identifiers: every object has a random UUID (as a string) chosen by the manager."""
from __future__ import annotations

import uuid


def new_id() -> str:
    return str(uuid.uuid4())
