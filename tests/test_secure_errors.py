"""Bad input and failing peers: one clear line, a non-zero exit, no hang, and the server goes on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mpc.session.control import CONTROL_VERSION, connect, recv_message, send_message
from mpc.session.local import free_port, local_parties

EXIT_USER_ERROR = 2


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def parties(tiny_checkpoints, tmp_path_factory):
    """One server (with dealer) shared by the tests below: it must survive each of them."""
    logs = tmp_path_factory.mktemp("error-logs")
    with local_parties(
        tiny_checkpoints["baseline"], dealer="ttp", logs=str(logs), timeout_s=20
    ) as running:
        yield running


def tokens_file(tmp_path, ids) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(ids))
    return str(path)


@pytest.mark.parametrize(
    "ids, fragment",
    [
        (list(range(17)), "too long: the context is 16"),
        ([1, 2, 512], "token id 512 is outside the vocabulary [0, 512)"),
        ([1, -3], "token id -3 is outside the vocabulary"),
        (["x1"], "is not an integer"),
        ([], "the prompt is empty"),
    ],
)
def test_bad_prompts_are_refused_before_any_mpc_work(parties, tmp_path, ids, fragment):
    stderr = parties.client("--tokens", tokens_file(tmp_path, ids), check=False)
    assert stderr.count("\n") == 1 and fragment in stderr, stderr


def test_generation_must_fit_the_context(parties, tmp_path):
    stderr = parties.client(
        "--tokens", tokens_file(tmp_path, list(range(10))), "--max-new-tokens", "8", check=False
    )
    assert "too long" in stderr and "7 generated token(s) must fit" in stderr


def test_prompt_from_a_file_or_standard_input(parties, tmp_path, tiny_checkpoints):
    """The private ways to give a prompt (a command line is visible in `ps`): both tokenize the
    text exactly as --prompt would; an unreadable file is one line."""
    from models.checkpoint import load_checkpoint
    from models.data import tokenizer_from_json

    text = "def fib(n):\n    return n"
    tokenizer = tokenizer_from_json(load_checkpoint(tiny_checkpoints["baseline"]).tokenizer_json)
    expected = tokenizer.encode(text).ids
    path = tmp_path / "prompt.txt"
    path.write_text(text)
    assert parties.client("--prompt-file", str(path))["prompt_ids"] == expected
    lines: list[str] = []
    record = parties.client("--prompt-file", "-", stdin=text, on_progress=lines.append)
    assert record["prompt_ids"] == expected
    assert [line.split(" elapsed")[0] for line in lines] == [
        "token 1/1 layer 1/2",
        "token 1/1 layer 2/2",
    ], "one progress line per transformer block"
    stderr = parties.client("--prompt-file", str(tmp_path / "missing.txt"), check=False)
    assert stderr.count("\n") == 1 and "cannot read prompt file" in stderr, stderr


def test_fingerprint_and_architecture_mismatch(parties):
    stderr = parties.client("--prompt", "x", "--expect-fingerprint", "deadbeef", check=False)
    assert "model fingerprint mismatch" in stderr
    stderr = parties.client("--prompt", "x", "--expect-arch", "aero", check=False)
    assert "model mismatch: server offers SM+LN+G, expected EReg(SM(t)+ScFuFFN)" in stderr


@pytest.mark.parametrize(
    "request_changes, fragment",
    [
        ({"fingerprint": "0" * 64}, "model fingerprint mismatch"),
        ({"version": 99}, "protocol version 99"),
        ({"prompt_length": 0}, "prompt_length must be a positive integer"),
        ({"prompt_length": "5"}, "prompt_length must be a positive integer"),
        ({"new_tokens": 20}, "exceeds the context of 16"),
    ],
)
def test_server_refuses_malformed_requests(parties, request_changes, fragment):
    with connect(parties.host, parties.port, 10, "server") as sock:
        hello = recv_message(sock, 10, expect="hello")
        request = {
            "type": "request",
            "version": CONTROL_VERSION,
            "fingerprint": hello["fingerprint"],
            "prompt_length": 4,
            "new_tokens": 1,
            **request_changes,
        }
        send_message(sock, request)
        with pytest.raises(Exception, match=fragment):
            recv_message(sock, 10)


def test_garbage_bytes_on_the_port(parties):
    with socket.create_connection((parties.host, parties.port), timeout=10) as sock:
        sock.sendall(b"\xff" * 64 + b"GET / HTTP/1.0\r\n\r\n")
        time.sleep(0.5)


def test_server_still_answers_after_all_of_the_above(parties, tmp_path):
    record = parties.client("--tokens", tokens_file(tmp_path, [5, 6, 7]))
    assert len(record["generated_ids"]) == 1
    assert "failed" in (parties.logs / "server.log").read_text()


def test_unreachable_server():
    result = run(["mpc.client", "--prompt", "x", "--port", str(free_port()), "--timeout", "1"])
    assert_one_line_error(result, "cannot reach the server at 127.0.0.1:")


def test_hostile_server_announcing_a_huge_model_is_refused_before_building_it():
    """A fake server's hello with a well-formed description (fingerprint and all) of a model with
    10^6 layers: 7 T parameters the client would allocate for its skeleton. It refuses at once,
    with one line, and far below the memory such a skeleton needs."""
    import threading

    from models.config import resolve_config
    from mpc.approx import ApproxConfig
    from mpc.session.control import listen
    from mpc.session.public_model import PublicModel

    huge = resolve_config("baseline", "gpt2", n_layer=10**6)
    public = PublicModel("crypten", huge.to_dict(), ApproxConfig().to_dict(), "", "ttp")
    hello = {"type": "hello", "version": CONTROL_VERSION, "public": public.to_dict()}
    hello |= {"fingerprint": public.fingerprint(), "trust": public.trust}
    port = free_port()
    listener = listen("127.0.0.1", port, "fake server")

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            send_message(conn, hello)
            conn.settimeout(30)
            conn.recv(1)  # until the client hangs up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started = time.monotonic()
    result = run(["mpc.client", "--tokens", "/dev/null", "--port", str(port), "--timeout", "20"])
    listener.close()
    assert_one_line_error(result, "more than --max-model-bytes 4 GB allows")
    assert "7,087,911 M parameters" in result.stderr, result.stderr
    assert time.monotonic() - started < 60
    smaller = resolve_config("baseline", "gpt2")
    assert 4 * smaller.n_params < 4e9 < 4 * huge.n_params  # GPT-2 small passes the default


def test_corrupt_checkpoint_and_port_in_use(tmp_path, tiny_checkpoints):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_checkpoints["baseline"].read_bytes()[:5000])
    assert_one_line_error(run(["mpc.server", "--checkpoint", str(corrupt)]), "not a readable")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = run(
            ["mpc.server", "--checkpoint", str(tiny_checkpoints["baseline"]), "--port", str(port)]
        )
    assert_one_line_error(result, f"server cannot listen on 127.0.0.1:{port}")


class RunsCode:
    """Unpickling this runs a shell command: what a hostile checkpoint file could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoints_are_loaded_without_running_code_and_checked_against_their_config(
    tmp_path, tiny_checkpoints
):
    good = torch.load(tiny_checkpoints["baseline"], weights_only=True)
    hostile, marker = tmp_path / "hostile.pt", tmp_path / "code-ran"
    torch.save({**good, "meta": RunsCode(marker)}, hostile)
    result = run(["mpc.server", "--checkpoint", str(hostile), "--port", str(free_port())])
    assert_one_line_error(result, "is not a readable checkpoint")
    assert not marker.exists(), "loading the checkpoint ran pickled code"
    mismatched = tmp_path / "mismatched.pt"
    torch.save({**good, "config": {**good["config"], "n_embd": 64}}, mismatched)
    result = run(["mpc.server", "--checkpoint", str(mismatched), "--port", str(free_port())])
    assert_one_line_error(result, "weights do not match the config")


def test_unknown_architecture_and_bad_limits():
    result = run(["mpc.server", "--random-arch", "gpt5", "--preset", "tiny"])
    assert_one_line_error(result, "unknown architecture 'gpt5'")
    result = run(["mpc.client", "--prompt", "x", "--timeout", "0"])
    assert result.returncode == EXIT_USER_ERROR and "--timeout must be positive" in result.stderr


def test_server_vanishing_mid_query_ends_the_client(tiny_checkpoints, tmp_path):
    timeout = 15
    with local_parties(tiny_checkpoints["baseline"], logs=str(tmp_path), timeout_s=timeout) as p:
        progress = tmp_path / "client.out"
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mpc.client",
                "--port",
                str(p.port),
                "--tokens",
                tokens_file(tmp_path, [1, 2, 3]),
                "--max-new-tokens",
                "12",
                "--timeout",
                str(timeout),
            ],
            stdout=progress.open("w"),
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: "token 1/12" in progress.read_text(), 120)  # inside the MPC session
        os.killpg(p.processes["server"].pid, signal.SIGKILL)
        started = time.monotonic()
        stderr = client.communicate(timeout=timeout + 30)[1]
    assert client.returncode == EXIT_USER_ERROR, stderr
    assert stderr.count("\n") == 1 and "MPC session failed" in stderr, stderr
    assert time.monotonic() - started < timeout + 10


def test_client_vanishing_mid_query_leaves_the_server_serving(tiny_checkpoints, tmp_path):
    with local_parties(tiny_checkpoints["baseline"], logs=str(tmp_path), timeout_s=15) as p:
        progress = tmp_path / "client.out"
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mpc.client",
                "--port",
                str(p.port),
                "--tokens",
                tokens_file(tmp_path, [1, 2, 3]),
                "--max-new-tokens",
                "12",
            ],
            stdout=progress.open("w"),
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: "token 1/12" in progress.read_text(), 120)
        os.killpg(client.pid, signal.SIGKILL)
        client.wait()
        wait_for(lambda: "failed" in (tmp_path / "server.log").read_text(), 40)
        record = p.client("--tokens", tokens_file(tmp_path, [4, 5]))
    assert len(record["generated_ids"]) == 1


def wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_start_up_watchdog_ends_a_stuck_party_with_one_line():
    """gloo may retry connecting to a vanished peer past its own timeout: the party's watchdog
    ends the process with one line and the peer-error exit code instead."""
    import subprocess
    import sys
    import time

    code = (
        "import time; from mpc.session.guards import start_watchdog; "
        "start_watchdog(0.5, 'starting the MPC session'); time.sleep(30)"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no progress for" in done.stderr
    assert time.monotonic() - started < 20


def test_native_transport_noise_stays_out_of_the_one_line_error(capfd):
    """gloo writes connection retries straight to fd 2; a client failure must still be one line,
    with the transport's lines kept in a file the error names."""
    import os

    from mpc.session.control import PeerError
    from mpc.session.guards import native_stderr_to_file

    with pytest.raises(PeerError) as raised:
        with native_stderr_to_file("aero-pi-test-") as log:
            os.write(2, b"[debug_logger.cc:9] ERROR failed to connect, willRetry=1\n")
            raise PeerError("MPC session failed while starting the MPC session: timeout")
    assert str(raised.value).endswith(f"(transport log: {log})")
    assert "failed to connect" in open(log).read()
    os.unlink(log)
    with native_stderr_to_file("aero-pi-test-") as quiet:
        os.write(2, b"retry noise of a session that then succeeded\n")
    assert not os.path.exists(quiet)  # kept only for a failure
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"  # fd 2 is back
