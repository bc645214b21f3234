"""The policy engine (issue 19): load balancing, power saving, idle desktops and memory density, decided by a pure
function on a snapshot and carried out by the leader manager; see docs/policies.md. Public module: `service`."""
