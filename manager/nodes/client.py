"""NodeClient: the only way the manager reaches a host, through that host's node agent (HTTP + token).

One method per agent route. Every failure comes back as a core.errors class: a host that does not
answer (refused, reset, timed out) raises NodeUnreachable; an error the agent reports is rebuilt from
its `{"error", "detail"}` body with core.errors.error_from_dict, so a 404 from the agent is raised
here as DomainNotFound, a 409 as Conflict, a 502 as HypervisorError, and so on. Calls made by a leader's singleton
loop carry its epoch (docs/ha.md); an agent that knows a newer one answers 409 not_leader, raised as NotLeader.
"""
from __future__ import annotations

from typing import Any

import httpx

from core.errors import NodeUnreachable, VdiError, error_from_dict
from core.specs import LEADER_EPOCH_HEADER, DesktopSpec, DomainStats, HostCaps
from ha_manager.service import fence_epoch

DEFAULT_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 3.0
# Operations that legitimately take long get this much on top of their own duration.
SLOW_CALL_MARGIN_S = 30.0
MIGRATE_TIMEOUT_S = 600.0
BLOCK_COMMIT_TIMEOUT_S = 600.0


class NodeClient:
    """A synchronous client of one node agent. Thread-safe (httpx.Client is); close() when done."""

    def __init__(self, base_url: str, token: str, timeout: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- transport --------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                 timeout: float | None = None) -> httpx.Response:
        kwargs: dict[str, Any] = {}
        if json is not None:
            kwargs["json"] = json
        if params:
            kwargs["params"] = params
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S))
        epoch = fence_epoch()
        if epoch is not None:  # a leader's singleton loop: the agent refuses it once it knows a newer epoch
            kwargs["headers"] = {LEADER_EPOCH_HEADER: str(epoch)}
        try:
            response = self._http.request(method, f"/v1{path}", **kwargs)
        except httpx.TransportError as exc:
            raise NodeUnreachable(host=self.base_url, reason=_describe(exc)) from exc
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise NodeUnreachable(host=self.base_url,
                                  reason=f"{method} {path} answered {response.status_code} without JSON") from None

    # ---- routes -------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """GET /v1/health: {"status": "ok", "node", "agent_started_at", "hostname", "libvirt_version"}."""
        return self._json("GET", "/health")

    def capabilities(self) -> HostCaps:
        """GET /v1/capabilities."""
        return HostCaps.from_dict(self._json("GET", "/capabilities"))

    def set_ksm(self, settings: dict[str, int]) -> dict[str, int]:
        """PUT /v1/ksm: the host's KSM settings (run, pages_to_scan, sleep_millisecs, merge_across_nodes); the
        settings in force afterwards. Conflict (409) when the agent does not manage KSM on its host."""
        return dict(self._json("PUT", "/ksm", json=settings)["ksm"])

    def list_domains(self) -> list[dict[str, Any]]:
        """GET /v1/domains: the host's domains owned by us, each {"uuid", "name", "state", "desktop_id"}."""
        return list(self._json("GET", "/domains")["domains"])

    def domain_disks(self) -> dict[str, list[str]]:
        """GET /v1/disks: every defined domain's disk files (ours or not), by uuid."""
        return {d["uuid"]: list(d["paths"]) for d in self._json("GET", "/disks")["domains"]}

    def resize(self, uuid: str, vcpus: int | None = None, memory_mib: int | None = None) -> dict[str, str]:
        """POST /v1/domains/{uuid}/resize: per field given, "live" or "next_boot"."""
        body = {k: v for k, v in (("vcpus", vcpus), ("memory_mib", memory_mib)) if v is not None}
        return dict(self._json("POST", f"/domains/{uuid}/resize", json=body)["applied"])

    def get_domain(self, uuid: str) -> dict[str, Any]:
        """GET /v1/domains/{uuid}: {"uuid", "name", "state", "desktop_id", "graphics": [{type, listen, port,
        tls_port}]}. Raises DomainNotFound."""
        return self._json("GET", f"/domains/{uuid}")

    def define(self, spec: DesktopSpec) -> dict[str, Any]:
        """PUT /v1/domains/{uuid}: define or redefine the desktop's domain (idempotent)."""
        return self._json("PUT", f"/domains/{spec.uuid}", json=spec.to_dict())

    def undefine(self, uuid: str) -> None:
        """DELETE /v1/domains/{uuid}. Raises Conflict while it runs, DomainNotFound if absent."""
        self._request("DELETE", f"/domains/{uuid}")

    def start(self, uuid: str) -> dict[str, Any]:
        """POST /v1/domains/{uuid}/start (a running domain is left running)."""
        return self._json("POST", f"/domains/{uuid}/start", timeout=self.timeout + SLOW_CALL_MARGIN_S)

    def shutdown(self, uuid: str, timeout: float = 60.0) -> dict[str, Any]:
        """POST /v1/domains/{uuid}/shutdown {"timeout": s}; raises GatewayTimeout if the guest stays up."""
        return self._json("POST", f"/domains/{uuid}/shutdown", json={"timeout": timeout},
                          timeout=timeout + SLOW_CALL_MARGIN_S)

    def poweroff(self, uuid: str) -> dict[str, Any]:
        """POST /v1/domains/{uuid}/poweroff."""
        return self._json("POST", f"/domains/{uuid}/poweroff", timeout=self.timeout + SLOW_CALL_MARGIN_S)

    def reboot(self, uuid: str) -> dict[str, Any]:
        """POST /v1/domains/{uuid}/reboot."""
        return self._json("POST", f"/domains/{uuid}/reboot")

    def suspend(self, uuid: str) -> dict[str, Any]:
        """POST /v1/domains/{uuid}/suspend."""
        return self._json("POST", f"/domains/{uuid}/suspend")

    def resume(self, uuid: str) -> dict[str, Any]:
        """POST /v1/domains/{uuid}/resume."""
        return self._json("POST", f"/domains/{uuid}/resume")

    def migrate(self, uuid: str, dest_uri: str, migrate_uri: str | None = None,
                timeout: float = MIGRATE_TIMEOUT_S) -> dict[str, Any]:
        """POST /v1/domains/{uuid}/migrate {"dest_uri"[, "migrate_uri"]}: live migration, shared storage."""
        body: dict[str, Any] = {"dest_uri": dest_uri}
        if migrate_uri is not None:
            body["migrate_uri"] = migrate_uri
        return self._json("POST", f"/domains/{uuid}/migrate", json=body, timeout=timeout)

    def set_ticket(self, uuid: str, password: str, valid_seconds: int = 120) -> str:
        """POST /v1/domains/{uuid}/ticket; returns passwdValidTo (UTC, YYYY-MM-DDTHH:MM:SS)."""
        body = {"password": password, "valid_seconds": valid_seconds}
        return str(self._json("POST", f"/domains/{uuid}/ticket", json=body)["valid_to"])

    def cut_consoles(self, uuid: str) -> dict[str, int]:
        """POST /v1/domains/{uuid}/cut-consoles: every console client disconnected, every ticket given so far
        useless; returns the displays cut {"spice": n, "vnc": n}."""
        return self._json("POST", f"/domains/{uuid}/cut-consoles")

    def install_spice_tls(self, ca_cert: str, server_cert: str, server_key: str) -> dict[str, Any]:
        """PUT /v1/spice-tls: the host's SPICE TLS files (see hypervisor_node.spice_tls)."""
        return self._json("PUT", "/spice-tls", json={"ca_cert": ca_cert, "server_cert": server_cert,
                                                     "server_key": server_key})

    def screenshot(self, uuid: str, screen: int = 0) -> bytes:
        """GET /v1/domains/{uuid}/screenshot: PNG bytes."""
        return self._request("GET", f"/domains/{uuid}/screenshot", params={"screen": screen},
                             timeout=self.timeout + SLOW_CALL_MARGIN_S).content

    def send_key(self, uuid: str, keycodes: list[int], hold_ms: int = 50) -> None:
        """POST /v1/domains/{uuid}/keys {"keycodes", "hold_ms"}: press the keys (Linux input codes) together on the
        running domain's keyboard, then release them."""
        self._request("POST", f"/domains/{uuid}/keys", json={"keycodes": keycodes, "hold_ms": hold_ms})

    def stats(self) -> list[DomainStats]:
        """GET /v1/stats: bulk stats of every owned domain."""
        return [DomainStats.from_dict(d) for d in self._json("GET", "/stats")["domains"]]

    def guest(self, uuid: str, command: str, timeout: float = 5.0) -> str:
        """POST /v1/domains/{uuid}/guest {"command", "timeout"}: the guest agent's one-line reply."""
        body = {"command": command, "timeout": timeout}
        return str(self._json("POST", f"/domains/{uuid}/guest", json=body,
                              timeout=timeout + SLOW_CALL_MARGIN_S)["reply"])

    def snapshot_disk(self, uuid: str, overlay: str) -> list[str]:
        """POST /v1/domains/{uuid}/snapshot {"overlay"}: live disk-only snapshot; the running domain continues
        in the new file `overlay`. Returns the disk chain afterwards, top first. Idempotent (a re-run is a no-op)."""
        return list(self._json("POST", f"/domains/{uuid}/snapshot", json={"overlay": overlay},
                               timeout=self.timeout + SLOW_CALL_MARGIN_S)["chain"])

    def block_commit(self, uuid: str, top: str | None = None, base: str | None = None,
                     timeout: float = BLOCK_COMMIT_TIMEOUT_S) -> list[str]:
        """POST /v1/domains/{uuid}/blockcommit {"top", "base", "timeout"}: live merge of `top` (default: the active
        file, then pivot) into `base` (default: top's immediate backing file). Returns the chain afterwards."""
        body = {"top": top, "base": base, "timeout": timeout}
        return list(self._json("POST", f"/domains/{uuid}/blockcommit", json=body,
                               timeout=timeout + SLOW_CALL_MARGIN_S)["chain"])


def _error_from_response(response: httpx.Response) -> VdiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error" not in body:
        body = {"error": "error", "detail": f"node agent answered HTTP {response.status_code}: "
                                            f"{response.text[:300]}"}
    return error_from_dict(response.status_code, body)


def _describe(exc: httpx.TransportError) -> str:
    kind = {httpx.ConnectError: "connection refused or no route",
            httpx.ConnectTimeout: "connection timed out",
            httpx.ReadTimeout: "no answer within the timeout",
            httpx.WriteTimeout: "request could not be sent within the timeout",
            httpx.PoolTimeout: "too many requests in flight"}.get(type(exc))
    return f"{kind} ({exc})" if kind else f"{type(exc).__name__}: {exc}"
