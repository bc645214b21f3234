"""How the manager reaches hypervisor hosts: NodeClient, the HTTP client of each host's node agent."""
from manager.nodes.client import NodeClient

__all__ = ["NodeClient"]
