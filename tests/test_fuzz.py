"""Hostile input: hundreds of malformed handshakes, frames, bookings and prompts.

One server and one dealer (random tiny weights) take every malformed message below; each must get
an error answer (or a closed connection) at once, cost one log line, and leave the server serving:
a good query succeeds at the end. The client's own checks of a hostile server's description and of
malformed prompts are fuzzed in-process: they may only raise the one-line error types.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.checkpoint import CheckpointError
from models.config import ConfigError, resolve_config
from models.errors import UserError
from mpc.client import check_public_model, model_of, validate_tokens
from mpc.dealer import validate_booking
from mpc.server import validate_request
from mpc.session.control import CONTROL_VERSION, ControlError, connect
from mpc.session.control import recv_message as recv
from mpc.session.local import local_parties
from mpc.session.public_model import PublicModel
from tests.test_secure_errors import wait_for

TIMEOUT_S = 20  # the server's every wait: its party's start-up on a loaded machine must fit
EXAMPLES = {"request": 300, "frame": 100, "booking": 60, "hello": 150, "prompt": 150}
FUZZ = settings(
    deadline=None,
    database=None,  # nothing written into the shared working tree
    derandomize=True,  # the same inputs on every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Malformed inputs each program received, for the log check; the fixture's probe is one more.
SENT = {"server": 1, "dealer": 0}


@pytest.fixture(scope="module")
def parties(tmp_path_factory):
    logs = tmp_path_factory.mktemp("fuzz-logs")
    server_args = ("--random-arch", "baseline", "--preset", "tiny")
    with local_parties(None, server_args=server_args, logs=str(logs), timeout_s=TIMEOUT_S) as p:
        with connect(p.host, p.port, 60, "server") as sock:  # wait until it listens
            hello = recv(sock, TIMEOUT_S, expect="hello")
        p.public = PublicModel.from_dict(hello["public"])
        p.dealer_port = int(p.commands["dealer"][p.commands["dealer"].index("--port") + 1])
        yield p


def frame(value) -> bytes:
    body = json.dumps(value).encode()
    return struct.pack(">I", len(body)) + body


def exchange(host: str, port: int, payload: bytes, read_hello: bool) -> list:
    """Send `payload` (after the server's hello), close our side, and read until the peer closes:
    the decoded messages it answered with (a reset counts as a close; a peer that neither answers
    nor closes fails the test with a timeout)."""
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        if read_hello:
            recv(sock, TIMEOUT_S, expect="hello")
        received = b""
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(1 << 16):
                received += chunk
        except TimeoutError:
            raise  # the peer neither answered nor closed
        except OSError:  # the peer refused and closed before reading everything: a reset
            pass
    messages = []
    while len(received) >= 4:
        (size,) = struct.unpack(">I", received[:4])
        messages.append(json.loads(received[4 : 4 + size]))
        received = received[4 + size :]
    return messages


def assert_refused(messages: list) -> None:
    """Nothing but (at most) one error message, whose text is one line."""
    assert all(m.get("type") == "error" for m in messages), messages
    assert len(messages) <= 1 and all("\n" not in m["message"] for m in messages), messages


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def malformed_requests(draw, public: PublicModel):
    """A valid request with one to three fields dropped, retyped or out of range, an unknown
    field, or a wrong message type."""
    request = {
        "type": "request",
        "version": CONTROL_VERSION,
        "fingerprint": public.fingerprint(),
        "prompt_length": 3,
        "new_tokens": 1,
        "all_positions": False,
    }
    fields = sorted(request) + ["extra"]
    for name in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True)):
        odd = st.integers(-(2**70), 2**70) | json_values
        if draw(st.booleans()) and name in request:
            del request[name]
        else:
            request[name] = draw(odd)
    return request


def is_valid(request, public: PublicModel) -> bool:
    try:
        validate_request(request, public)
    except ControlError:
        return False
    return request.get("type") == "request"


@settings(FUZZ, max_examples=EXAMPLES["request"])
@given(data=st.data())
def test_malformed_requests_are_refused(parties, data):
    request = data.draw(malformed_requests(parties.public))
    if is_valid(request, parties.public):  # a mutation that happens to be harmless
        return
    SENT["server"] += 1
    assert_refused(exchange(parties.host, parties.port, frame(request), read_hello=True))


oversize = st.integers((64 << 20) + 1, 2**32 - 1).map(lambda n: struct.pack(">I", n))
short_body = st.tuples(st.integers(1, 1000), st.binary(max_size=20)).map(
    lambda t: struct.pack(">I", t[0] + len(t[1])) + t[1]
)
non_objects = json_values.filter(lambda v: not isinstance(v, dict)).map(frame)
garbage_frames = st.binary(min_size=1, max_size=200) | oversize | short_body | non_objects


@settings(FUZZ, max_examples=EXAMPLES["frame"])
@given(payload=garbage_frames)
def test_garbage_frames_are_refused(parties, payload):
    SENT["server"] += 1
    assert_refused(exchange(parties.host, parties.port, payload, read_hello=True))


booking_fields = st.sampled_from(["type", "version", "host", "port", "timeout_s"])
bookings = st.dictionaries(booking_fields, json_values) | json_values.map(
    lambda v: {"type": "session", "version": CONTROL_VERSION, "host": "127.0.0.1", "port": v}
)


@settings(FUZZ, max_examples=EXAMPLES["booking"])
@given(booking=bookings)
def test_malformed_dealer_bookings_are_refused(parties, booking):
    with contextlib.suppress(ControlError):
        validate_booking(booking)
        if booking.get("type") == "session":
            return  # a valid booking would start a session
    SENT["dealer"] += 1
    answer = exchange(parties.host, parties.dealer_port, frame(booking), read_hello=False)
    assert_refused(answer)


def test_a_silent_client_is_dropped_after_the_timeout(parties):
    SENT["server"] += 1
    started = time.monotonic()
    with connect(parties.host, parties.port, 10, "server") as sock:
        recv(sock, TIMEOUT_S, expect="hello")
        with pytest.raises(ControlError, match="peer sent nothing before the timeout"):
            recv(sock, 3 * TIMEOUT_S)
    assert TIMEOUT_S - 1 < time.monotonic() - started < 2 * TIMEOUT_S


def test_server_and_dealer_survive_and_log_one_line_each(parties, tmp_path):
    (tmp_path / "ids.json").write_text("[1, 2, 3]")
    SENT["dealer"] += 1  # a silent booking connection must not hold up the real booking
    with connect(parties.host, parties.dealer_port, 10, "dealer"):
        record = parties.client("--tokens", str(tmp_path / "ids.json"), "--timeout", "60")
    assert len(record["generated_ids"]) == 1
    wait_for(lambda: "query 1 from" in (parties.logs / "server.log").read_text(), 30)
    refusals = lambda: (parties.logs / "dealer.log").read_text().count("refused: ")
    wait_for(lambda: refusals() == SENT["dealer"], 30)  # the silent one, once it closed
    server_log = (parties.logs / "server.log").read_text()
    dealer_log = (parties.logs / "dealer.log").read_text()
    assert "Traceback" not in server_log + dealer_log and "unexpectedly" not in server_log
    print(f"\nfuzz: malformed inputs sent to the server {SENT['server']}, dealer {SENT['dealer']}")
    assert server_log.count("failed: ") == SENT["server"] >= 300, server_log[-2000:]
    assert dealer_log.count("refused: ") == SENT["dealer"], dealer_log[-2000:]


# --- the client's side: a hostile server's description, malformed prompts -------------------


@settings(FUZZ, max_examples=EXAMPLES["hello"])
@given(hello=st.dictionaries(st.sampled_from(["version", "public", "fingerprint"]), json_values))
def test_client_refuses_malformed_hellos(hello):
    with pytest.raises((UserError, ConfigError)):
        model_of(check_public_model({"version": CONTROL_VERSION, **hello}, None, None))


def hostile_descriptions():
    """A well-formed description whose fields are replaced by odd values, one at a time."""
    good = {"backend": "crypten", "config": {}, "settings": {}, "tokenizer_json": "",
            "layernorm_var_scales": [], "weights": ""}  # fmt: skip
    names = st.sampled_from([*good, "dealer"])
    return st.tuples(names, json_values).map(lambda f: {**good, "dealer": "ttp", f[0]: f[1]})


config_fields = st.sampled_from(["n_layer", "n_embd", "n_head", "vocab_size", "arch", "norm"])


@settings(FUZZ, max_examples=EXAMPLES["hello"])
@given(public=hostile_descriptions(), config=st.dictionaries(config_fields, json_values))
def test_client_survives_hostile_descriptions(public, config):
    public = {**public, "config": config} if isinstance(public["config"], dict) else public
    try:
        model = PublicModel.from_dict(public)
        hello = {"version": CONTROL_VERSION, "public": public, "fingerprint": model.fingerprint()}
        model_of(check_public_model(hello, None, None))
    except (UserError, ConfigError, CheckpointError):
        pass


raw_ids = st.integers(-(2**40), 2**40) | st.text(max_size=6) | st.floats()


@settings(FUZZ, max_examples=EXAMPLES["prompt"])
@given(raw=st.lists(raw_ids, max_size=20), new_tokens=st.integers(1, 20))
def test_malformed_prompts_are_refused_before_any_mpc_work(raw, new_tokens):
    cfg = resolve_config("baseline", "tiny")
    try:
        ids = validate_tokens(raw, cfg, new_tokens)
    except UserError as error:
        assert "\n" not in str(error)
        return
    assert all(0 <= i < cfg.vocab_size for i in ids) and 0 < len(ids) + new_tokens - 1 <= 16
