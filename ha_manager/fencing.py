"""Fencing: power a failed host off through its BMC and confirm it is off, before any of its desktops is started
elsewhere (otherwise a host that only lost its network would run them a second time).

A fence agent is one BMC interface: `power_off()` asks for a hard power-off (no guest shutdown), `power_state()`
answers "on" or "off". `fence(agents, timeout)` tries the host's agents in order; the first whose BMC reports
"off" within the timeout has fenced the host. Only a confirmed "off" counts: an agent that accepted the command
but never reports off, or that cannot be reached, is a failure, and the next agent is tried.

Agents (kind in the fence_agents table):
- ipmi: IPMI 2.0 over LAN (RMCP+, UDP 623) through pyghmi's client: chassis control "power down" (hard), then
  chassis status until the power is off. The same BMCs `ipmitool -I lanplus chassis power off` talks to.
- redfish: DMTF Redfish over HTTPS: POST {system}/Actions/ComputerSystem.Reset {"ResetType": "ForceOff"}, then
  GET {system} until PowerState is "Off". The system is options["system"] (e.g. /redfish/v1/Systems/1) or the
  first member of /redfish/v1/Systems.
Register another kind with `register(kind, factory)`.

The guard against a fencing storm lives here too (`connectivity_broken`): when several hosts are unreachable at
once and they are a large share of all hosts, the network failed, not the hosts (oVirt's
skipFencingIfConnectivityBroken, 50 % by default; docs/ha.md).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25


class FenceError(Exception):
    """A fence agent could not do what it was asked (unreachable BMC, refused login, refused command)."""


class FenceAgent(Protocol):
    description: str

    def power_off(self) -> None: ...

    def power_state(self) -> str: ...  # "on" | "off"

    def power_on(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class AgentConfig:
    """A fence agent's settings as stored (the password already opened)."""

    kind: str
    address: str
    port: int = 0
    username: str = ""
    password: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # the password is a secret
        return f"AgentConfig({self.kind} {self.address}:{self.port or 'default'} as {self.username!r})"


# ---- IPMI -----------------------------------------------------------------------------------------------------
_IPMI_COMMANDS: dict[tuple[str, int, str, str], Any] = {}
_IPMI_LOCK = threading.Lock()


class IpmiAgent:
    """IPMI over LAN through pyghmi's client (no keep-alive thread)."""

    DEFAULT_PORT = 623

    def __init__(self, config: AgentConfig, timeout: float) -> None:
        self.config = config
        self.port = config.port or self.DEFAULT_PORT
        self.description = f"ipmi {config.address}:{self.port}"
        self._command = None
        self.timeout = timeout

    def _session(self):
        if self._command is None:
            key = (self.config.address, self.port, self.config.username, self.config.password)
            with _IPMI_LOCK:
                self._command = _IPMI_COMMANDS.get(key)
                if self._command is None:
                    self._command = _IPMI_COMMANDS[key] = self._login()
        return self._command

    def _login(self):
        from pyghmi import exceptions as pyghmi_errors
        from pyghmi.ipmi import command

        try:
            return command.Command(bmc=self.config.address, userid=self.config.username,
                                   password=self.config.password, port=self.port, keepalive=False)
        except (pyghmi_errors.IpmiException, OSError) as exc:
            raise FenceError(f"{self.description}: cannot log in: {exc}") from exc

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        from pyghmi import exceptions as pyghmi_errors

        try:
            return fn(self._session())
        except (pyghmi_errors.IpmiException, OSError) as exc:
            raise FenceError(f"{self.description}: {what} failed: {exc}") from exc

    def power_off(self) -> None:
        # "off" is chassis control 0, power down: immediate, no ACPI (ipmitool's "chassis power off")
        self._call("power off", lambda c: c.set_power("off", wait=False))

    def power_on(self) -> None:
        # chassis control 1, power up (the policy engine's wake from standby)
        self._call("power on", lambda c: c.set_power("on", wait=False))

    def power_state(self) -> str:
        state = self._call("power status", lambda c: c.get_power())
        return str(state.get("powerstate", "")) if isinstance(state, dict) else ""

    def close(self) -> None:
        # The session stays for the next fence of this BMC: pyghmi keeps one session per BMC and credentials in the
        # process, and a second Command for a BMC whose session is open (or was logged out) waits forever.
        self._command = None


# ---- Redfish --------------------------------------------------------------------------------------------------
class RedfishAgent:
    """DMTF Redfish over HTTP(S) with basic authentication."""

    def __init__(self, config: AgentConfig, timeout: float) -> None:
        self.config = config
        scheme = config.options.get("scheme", "https")
        port = config.port or (443 if scheme == "https" else 80)
        self.base = f"{scheme}://{config.address}:{port}"
        self.description = f"redfish {self.base}"
        self._http = httpx.Client(base_url=self.base, auth=(config.username, config.password),
                                  verify=bool(config.options.get("verify_tls", True)),
                                  timeout=httpx.Timeout(min(timeout, 10.0)), headers={"Accept": "application/json"})
        self._system: str | None = config.options.get("system") or None

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FenceError(f"{self.description}: {method} {path} failed: {exc}") from exc
        if response.status_code >= 400:
            raise FenceError(f"{self.description}: {method} {path} answered {response.status_code}: "
                             f"{response.text[:200]}")
        return response

    def _json(self, path: str) -> dict[str, Any]:
        try:
            return dict(self._request("GET", path).json())
        except ValueError as exc:
            raise FenceError(f"{self.description}: GET {path} did not answer JSON") from exc

    def system(self) -> str:
        if self._system is None:
            members = self._json("/redfish/v1/Systems").get("Members") or []
            if not members:
                raise FenceError(f"{self.description}: /redfish/v1/Systems lists no system")
            self._system = str(members[0]["@odata.id"])
        return self._system

    def power_off(self) -> None:
        self._request("POST", f"{self.system().rstrip('/')}/Actions/ComputerSystem.Reset",
                      json={"ResetType": "ForceOff"})

    def power_on(self) -> None:
        self._request("POST", f"{self.system().rstrip('/')}/Actions/ComputerSystem.Reset", json={"ResetType": "On"})

    def power_state(self) -> str:
        return str(self._json(self.system()).get("PowerState", "")).lower()

    def close(self) -> None:
        self._http.close()


AgentFactory = Callable[[AgentConfig, float], FenceAgent]
KINDS: dict[str, AgentFactory] = {"ipmi": IpmiAgent, "redfish": RedfishAgent}


def register(kind: str, factory: AgentFactory) -> None:
    KINDS[kind] = factory


def make_agent(config: AgentConfig, timeout: float) -> FenceAgent:
    try:
        factory = KINDS[config.kind]
    except KeyError:
        raise FenceError(f"fence agent kind {config.kind!r} is unknown; use one of {', '.join(sorted(KINDS))}") \
            from None
    return factory(config, timeout)


def parse_options(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ---- fencing --------------------------------------------------------------------------------------------------
@dataclass
class FenceOutcome:
    fenced: bool
    agent: str = ""  # the agent that confirmed the power-off
    detail: str = ""  # why not, or how
    seconds: float = 0.0
    attempts: list[str] = field(default_factory=list)  # one line per agent tried


def power_off_confirmed(agent: FenceAgent, timeout: float, clock: Callable[[], float] = time.monotonic,
                        sleep: Callable[[float], None] = time.sleep) -> str:
    """Power the host off through `agent` and wait until its BMC reports off. Returns how (a sentence);
    raises FenceError when it cannot, or when the power is still on after `timeout` s."""
    return switch_confirmed(agent, "off", timeout, clock, sleep)


def switch_confirmed(agent: FenceAgent, want: str, timeout: float, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> str:
    """Switch the host's power to `want` ("on" | "off") through `agent` and wait until its BMC reports it."""
    deadline = clock() + timeout
    if agent.power_state() == want:
        return f"{agent.description} reports the host {want} already"
    if want == "off":
        agent.power_off()
    else:
        agent.power_on()
    while True:
        if agent.power_state() == want:
            return f"{agent.description} powered the host {want}"
        if clock() >= deadline:
            other = "on" if want == "off" else "off"
            raise FenceError(f"{agent.description}: the power is still {other} {timeout:.0f} s after the "
                             f"power-{want}")
        sleep(POLL_SECONDS)


def switch_power(configs: Sequence[AgentConfig], on: bool, timeout: float,
                 make: Callable[[AgentConfig, float], FenceAgent] = make_agent) -> str:
    """Power a host on or off through the first of its agents that confirms it (the policy engine's standby and
    wake; the same BMCs fencing uses). Returns how (a sentence); raises FenceError with every agent's failure."""
    if not configs:
        raise FenceError("no power (fence) agent is configured for the host")
    failures: list[str] = []
    for config in configs:
        agent = None
        try:
            agent = make(config, timeout)
            return switch_confirmed(agent, "on" if on else "off", timeout)
        except FenceError as exc:
            failures.append(str(exc))
        finally:
            if agent is not None:
                agent.close()
    raise FenceError("; ".join(failures))


def fence(configs: Sequence[AgentConfig], timeout: float, make: Callable[[AgentConfig, float], FenceAgent] = make_agent,
          clock: Callable[[], float] = time.monotonic) -> FenceOutcome:
    """Try each agent in order until one confirms the host is off."""
    started = clock()
    if not configs:
        return FenceOutcome(False, detail="no fence agent is configured for the host")
    attempts: list[str] = []
    for config in configs:
        agent = None
        try:
            agent = make(config, timeout)
            how = power_off_confirmed(agent, timeout)
            attempts.append(how)
            return FenceOutcome(True, agent.description, how, clock() - started, attempts)
        except FenceError as exc:
            attempts.append(str(exc))
            log.warning("fence agent failed: %s", exc)
        finally:
            if agent is not None:
                agent.close()
    return FenceOutcome(False, detail="; ".join(attempts), seconds=clock() - started, attempts=attempts)


def connectivity_broken(unreachable: int, total: int, threshold: float) -> bool:
    """Is this many unreachable hosts a network failure rather than host failures? Two or more hosts unreachable
    at once that are at least `threshold` of all hosts. A single host is always judged on its own (a two-host
    cluster could otherwise never fence)."""
    return unreachable >= 2 and total > 0 and unreachable / total >= threshold
