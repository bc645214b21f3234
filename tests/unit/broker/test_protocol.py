"""Protocol choice: SPICE where both sides can, RDP for Windows guests when asked or needed, pool policy wins."""
from __future__ import annotations

import pytest

from broker.errors import NoCommonProtocol
from broker.protocol import choose_protocol, parse_protocols
from core.enums import OsType, Protocol, ProtocolPolicy

S, R, V = Protocol.SPICE, Protocol.RDP, Protocol.VNC
WIN, LINUX = OsType.WINDOWS_11, OsType.DEBIAN_12


def pick(os_type=LINUX, offered=(S,), client=(S,), policy=ProtocolPolicy.AUTO, preferred=None):
    return choose_protocol(os_type=os_type, desktop_protocols=offered, client_protocols=client, policy=policy,
                           preferred=preferred, desktop_name="d1").protocol


def test_parse_protocols_ignores_case_spaces_duplicates_and_unknown_names():
    assert parse_protocols("spice, RDP,spice,ica") == [S, R]
    assert parse_protocols(["vnc"]) == [V]
    assert parse_protocols("") == []


@pytest.mark.parametrize("os_type, offered, client, policy, preferred, expected", [
    (LINUX, (S,), (S, R), ProtocolPolicy.AUTO, None, S),
    (WIN, (S, R), (S, R), ProtocolPolicy.AUTO, None, S),  # SPICE first when both can
    (WIN, (S, R), (S, R), ProtocolPolicy.AUTO, R, R),  # the client asked for RDP
    (WIN, (S, R), (R,), ProtocolPolicy.AUTO, None, R),  # the client cannot do SPICE
    (WIN, (S, R), (S, R), ProtocolPolicy.PREFER_RDP, None, R),
    (WIN, (S, R), (S,), ProtocolPolicy.PREFER_RDP, None, S),  # prefer, not force
    (WIN, (S, R), (S, R), ProtocolPolicy.RDP_ONLY, S, R),  # policy beats the client's preference
    (WIN, (S, R), (S, R), ProtocolPolicy.SPICE_ONLY, R, S),
    (LINUX, (S, R), (S, R), ProtocolPolicy.AUTO, R, S),  # RDP only for Windows guests
    (LINUX, (S, V), (V,), ProtocolPolicy.AUTO, None, V),  # VNC as the last resort
    (LINUX, (S, V), (S, V), ProtocolPolicy.AUTO, V, V),
])
def test_choice(os_type, offered, client, policy, preferred, expected):
    assert pick(os_type, offered, client, policy, preferred) == expected


@pytest.mark.parametrize("os_type, offered, client, policy", [
    (WIN, (S,), (R,), ProtocolPolicy.AUTO),  # RDP not enabled on the guest
    (LINUX, (S, R), (R,), ProtocolPolicy.AUTO),  # RDP asked for a Linux guest
    (WIN, (S, R), (S,), ProtocolPolicy.RDP_ONLY),
    (WIN, (S, R), (R,), ProtocolPolicy.SPICE_ONLY),
    (LINUX, (), (S,), ProtocolPolicy.AUTO),
])
def test_no_common_protocol_is_a_clear_409(os_type, offered, client, policy):
    with pytest.raises(NoCommonProtocol) as info:
        pick(os_type, offered, client, policy)
    err = info.value
    assert err.status == 409 and err.code == "no_common_protocol"
    assert "d1" in err.message and f"policy is {policy.value}" in err.message
    assert "your client supports " + ",".join(p.value for p in client) in err.message
