"""The RFB viewer noVNC-style tests and bench/console_proxy.py use against the manager's console proxy: it lives in
planner.rfb (the planner's watermark client builds on it); this module keeps the tests' import path."""
from __future__ import annotations

from planner.rfb import RFB_VERSION, Refused, ServerInit, Viewer, console_url, open_viewer

__all__ = ["RFB_VERSION", "Refused", "ServerInit", "Viewer", "console_url", "open_viewer"]
