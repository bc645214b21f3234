"""A typed Python client of the VDI manager's API (and the `vdi` administrator commands built on it).

It talks HTTP only: it never imports the manager, so scripts can run anywhere with httpx and pydantic."""
from vdi_client.client import Client
from vdi_client.errors import ApiError, JobFailed, JobTimeout, ServerUnreachable, VdiClientError

__all__ = ["ApiError", "Client", "JobFailed", "JobTimeout", "ServerUnreachable", "VdiClientError"]
