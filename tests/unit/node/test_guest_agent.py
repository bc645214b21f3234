"""The guest agent's line protocol: request ids on the host side (hypervisor_node.guest_agent) and in the
demo guest's agent (image_manager.demo_image, its shell functions run with the host's busybox).

The same stale-reply case runs against a real booted guest in tests/integration/node/test_real_guest.py."""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from core.errors import GatewayTimeout, Invalid, Unavailable
from hypervisor_node import guest_agent
from image_manager import demo_image


# ---- parsing and formatting ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("@abc pong", ("abc", "pong")),
        ("@abc ok 23", ("abc", "ok 23")),
        ("@abc", ("abc", "")),
        ("@abc \r", ("abc", "")),
        ("@a-b_C9 read text with @ inside", ("a-b_C9", "read text with @ inside")),
        ("pong", (None, "pong")),  # a reply to an untagged command (a person at the socket)
        ("", (None, "")),
        ("@ pong", (None, "@ pong")),  # no id after the mark
        ("@bad!id pong", (None, "@bad!id pong")),
        ("@" + "x" * 65 + " pong", (None, "@" + "x" * 65 + " pong")),  # ids are at most 64 characters
        ("ong", (None, "ong")),  # the tail of a line whose start went to a client that left
    ],
)
def test_parse_reply(line, expected):
    assert guest_agent.parse_reply(line) == expected


def test_tagged_request_round_trips_through_parse_reply():
    request_id = guest_agent.new_request_id()
    line = guest_agent.tagged_request(request_id, "write /home/user/a.txt two words")
    assert line == f"@{request_id} write /home/user/a.txt two words\n".encode()
    assert guest_agent.parse_reply(line.decode().rstrip("\n")) == (request_id, "write /home/user/a.txt two words")


def test_request_ids_do_not_repeat():
    ids = {guest_agent.new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(guest_agent.REQUEST_ID_PATTERN.fullmatch(i) for i in ids)


@pytest.mark.parametrize("command", ["", "   ", "two\nlines", "carriage\rreturn", "x" * 4097, "@id ping",
                                     " @id ping", None, 7])
def test_commands_that_are_not_one_plain_line_are_invalid(command):
    with pytest.raises(Invalid):
        guest_agent.check_command(command)


@pytest.mark.parametrize("request_id", ["", "has space", "semi;colon", "x" * 65])
def test_bad_request_ids_are_invalid(request_id):
    with pytest.raises(Invalid, match="request id"):
        guest_agent.tagged_request(request_id, "ping")


# ---- call() against a scripted peer on a real unix socket ----------------------------------------
Peer = Callable[[socket.socket, str], None]


@pytest.fixture
def serve(tmp_path) -> Iterator[Callable[[Peer], str]]:
    """serve(peer) -> a socket path; `peer(conn, request_line)` answers the first client as scripted."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(peer: Peer) -> str:
        path = str(tmp_path / f"agent{len(listeners)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listeners.append(listener)

        def run() -> None:
            conn, _ = listener.accept()
            with conn:
                request = b""
                while not request.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                peer(conn, request.decode().rstrip("\n"))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(timeout=10)


def request_id_of(request: str) -> str:
    request_id, _command = guest_agent.parse_reply(request)
    assert request_id is not None, f"the request {request!r} carries no id"
    return request_id


def test_late_replies_to_earlier_requests_are_skipped(serve):
    def peer(conn: socket.socket, request: str) -> None:
        assert request.endswith(" write /home/user/notes.txt hello")
        # what a loaded guest leaves behind: late replies to timed-out calls, tagged and untagged, then ours
        conn.sendall(b"@0123456789abcdef pong\npong\n@" + request_id_of(request).encode() + b" ok 6\n")

    path = serve(peer)
    assert guest_agent.call(path, "write /home/user/notes.txt hello", timeout=30) == "ok 6"


def test_a_reply_split_across_reads_and_followed_by_more_is_one_line(serve):
    def peer(conn: socket.socket, request: str) -> None:
        line = f"@{request_id_of(request)} LibreOffice 7.4,Firefox ESR 115\nnext\n".encode()
        for start in range(0, len(line), 5):
            conn.sendall(line[start:start + 5])

    assert guest_agent.call(serve(peer), "apps", timeout=30) == "LibreOffice 7.4,Firefox ESR 115"


def test_only_stale_replies_then_silence_is_a_timeout(serve):
    hang_up = threading.Event()

    def peer(conn: socket.socket, _request: str) -> None:
        conn.sendall(b"@fedcba9876543210 pong\n")
        hang_up.wait(30)

    path = serve(peer)
    try:
        with pytest.raises(GatewayTimeout, match="the guest agent of test-desk did not finish within 0.5 s"):
            guest_agent.call(path, "ping", timeout=0.5, what="the guest agent of test-desk")
    finally:
        hang_up.set()


def test_a_peer_that_hangs_up_first_is_unavailable(serve):
    def peer(conn: socket.socket, _request: str) -> None:
        conn.sendall(b"@fedcba9876543210 pong\n")

    with pytest.raises(Unavailable, match="closed the channel before replying"):
        guest_agent.call(serve(peer), "ping", timeout=30)


def test_an_endless_line_is_unavailable(serve):
    def peer(conn: socket.socket, _request: str) -> None:
        conn.sendall(b"x" * (guest_agent.MAX_REPLY + 2))

    with pytest.raises(Unavailable, match="over 65536 bytes"):
        guest_agent.call(serve(peer), "ping", timeout=30)


def test_no_socket_is_unavailable(tmp_path):
    with pytest.raises(Unavailable, match="agent.sock"):
        guest_agent.call(str(tmp_path / "agent.sock"), "ping", timeout=5)


@pytest.mark.parametrize("timeout", [0, -1, True, "5"])
def test_bad_timeouts_are_invalid(tmp_path, timeout):
    with pytest.raises(Invalid, match="timeout"):
        guest_agent.call(str(tmp_path / "agent.sock"), "ping", timeout=timeout)


# ---- the guest side: the demo agent's answer_line, run by busybox sh --------------------------------
def answer_line(request: str) -> str:
    script = demo_image.AGENT_FUNCTIONS + '\nanswer_line "$1"\n'
    result = subprocess.run(["busybox", "sh", "-c", script, "agent", request], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


needs_busybox = pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static is not installed")


@needs_busybox
@pytest.mark.parametrize(
    ("request_line", "reply"),
    [
        ("ping", "pong\n"),  # untagged, as a person types it: a bare answer
        ("@abc ping", "@abc pong\n"),
        ("@abc ping\r", "@abc pong\n"),
        ("@" + "a" * 64 + " sleep 0", "@" + "a" * 64 + " ok\n"),
        ("@abc sleep 601", "@abc ERR usage: sleep SECONDS (a whole number from 0 to 600)\n"),
        ("sleep soon", "ERR usage: sleep SECONDS (a whole number from 0 to 600)\n"),
        ("@abc", "@abc ERR empty request: send a command such as ping\n"),
        ("@abc nonsense", "@abc ERR unknown command 'nonsense': send help for the list\n"),
        ("@bad!id ping", "@bad!id ERR a request id is 1-64 letters, digits, '-' or '_' after @\n"),
        ("@" + "a" * 65 + " ping", "@" + "a" * 65 + " ERR a request id is 1-64 letters, digits, '-' or '_' after @\n"),
    ],
)
def test_the_demo_agent_echoes_the_request_id(request_line, reply):
    assert answer_line(request_line) == reply


@needs_busybox
def test_the_demo_agent_answers_what_the_host_side_sends():
    request_id = guest_agent.new_request_id()
    line = guest_agent.tagged_request(request_id, "ping").decode().rstrip("\n")
    assert guest_agent.parse_reply(answer_line(line).rstrip("\n")) == (request_id, "pong")


def test_the_agent_functions_are_in_the_agent_script():
    # the guest runs AGENT_SCRIPT; the unit tests above run AGENT_FUNCTIONS: they must be the same code
    assert demo_image.AGENT_FUNCTIONS in demo_image.AGENT_SCRIPT
    assert 'answer_line "$request" >&3' in demo_image.AGENT_SCRIPT


PLANNER_USAGE = ("ERR usage: planner-op APP OP SEQ CODE (APP and OP: 1-32 of a-z 0-9 _ - starting with a letter;"
                 " SEQ: 1-999; CODE: 0-1023)\n")
NO_PLANNER = "ERR this desktop has no planner tools: use the planner variant of the demo image\n"


@needs_busybox
@pytest.mark.parametrize(
    ("request_line", "reply"),
    [
        ("planner-op word open 7", PLANNER_USAGE),
        ("planner-op word open 7 11 extra", PLANNER_USAGE),
        ("planner-op ../bin/sh open 7 11", PLANNER_USAGE),  # a name, never a path
        ("planner-op /opt/planner/apps/word open 7 11", PLANNER_USAGE),
        ("planner-op Word open 7 11", PLANNER_USAGE),
        ("planner-op " + "w" * 33 + " open 7 11", PLANNER_USAGE),
        ("planner-op word op* 7 11", PLANNER_USAGE),
        ("planner-op word open 0 11", PLANNER_USAGE),
        ("planner-op word open 1000 11", PLANNER_USAGE),
        ("planner-op word open 07 11", PLANNER_USAGE),
        ("planner-op word open 7 1024", PLANNER_USAGE),
        ("planner-op word open 7 -1", PLANNER_USAGE),
        # well formed, on a machine without /opt/planner (this host, a console desktop)
        ("planner-op word open 999 1023", NO_PLANNER),
        ("planner-op word open 1 0", NO_PLANNER),
        ("planner-apps", NO_PLANNER),
    ],
)
def test_the_demo_agent_checks_planner_requests_before_running_anything(request_line, reply):
    assert answer_line(request_line) == reply
