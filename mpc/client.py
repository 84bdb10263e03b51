"""The client: holds the prompt, knows only the public architecture, and alone learns the output.

    python -m mpc.client --prompt-file prompt.txt --host 127.0.0.1 --port 7000 --max-new-tokens 4
    echo "def fib(n):" | python -m mpc.client --prompt-file - --max-new-tokens 4

It receives the public model description from the server, checks its fingerprint, tokenizes and
validates the prompt locally, then runs the MPC session as rank 1. The server never sees the prompt
or the logits: the prompt enters as a secret-shared one-hot matrix, the logits are revealed to the
client only.

Exit codes: 0 done; 2 an error (one line on stderr); 75 the server is busy (it runs as many
sessions as it may): the same command may succeed later.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from models.atomic import atomic_write_json
from models.cli import run_main
from models.config import ConfigError, ModelConfig
from models.data import tokenizer_from_json
from models.errors import UserError
from mpc.roles import CLIENT
from mpc.session.control import (
    CONTROL_VERSION,
    ControlError,
    ServerBusy,
    connect,
    one_line,
    recv_message,
    send_message,
    short_repr,
)
from mpc.session.guards import native_stderr_to_file
from mpc.session.party import SessionSpec, run_party
from mpc.session.progress import MODES, QueryProgress
from mpc.session.public_model import (
    DEFAULT_MAX_MODEL_BYTES,
    PublicModel,
    accept_description,
    check_model_size,
)

EXIT_BUSY = 75  # sysexits' EX_TEMPFAIL: "try again later"


def read_token_file(path: str) -> list[str]:
    """Token ids from a file: a JSON list, or integers separated by whitespace or commas."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise UserError(f"cannot read token file {path} ({error.strerror})") from None
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            return [str(item) for item in json.loads(stripped)]
        except json.JSONDecodeError:
            raise UserError(f"token file {path} is not a valid JSON list") from None
    return stripped.replace(",", " ").split()


def prompt_text(args: argparse.Namespace) -> str:
    """The prompt: --prompt, or the whole of --prompt-file ("-": standard input). A file or a
    pipe is the private way: a command line is visible to every local user (`ps`)."""
    if args.prompt is not None:
        return args.prompt
    try:
        if args.prompt_file == "-":
            return sys.stdin.read()
        return Path(args.prompt_file).read_text()
    except OSError as error:
        raise UserError(f"cannot read prompt file {args.prompt_file} ({error.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"prompt file {args.prompt_file} is not UTF-8 text") from None


def validate_tokens(raw: list, cfg: ModelConfig, new_tokens: int) -> list[int]:
    """Integer ids inside the vocabulary that leave room for the generated tokens."""
    if not raw:
        raise UserError("the prompt is empty")
    ids = []
    for item in raw:
        # Plain ASCII digits only: int() would also take "1_0", " 7" and non-Latin digits.
        if not re.fullmatch(r"-?[0-9]{1,18}", str(item)):
            raise UserError(f"token id {short_repr(item)} is not an integer")
        value = int(str(item))
        if not 0 <= value < cfg.vocab_size:
            raise UserError(f"token id {value} is outside the vocabulary [0, {cfg.vocab_size})")
        ids.append(value)
    if len(ids) + new_tokens - 1 > cfg.block_size:
        raise UserError(
            f"prompt of {len(ids)} tokens is too long: the context is {cfg.block_size}"
            f" and {new_tokens - 1} generated token(s) must fit"
        )
    return ids


def check_public_model(hello: dict, expect_fingerprint: str | None, expect_arch: str | None):
    if hello.get("version") != CONTROL_VERSION:
        raise ControlError(
            f"server speaks protocol {hello.get('version')!r}, client {CONTROL_VERSION}"
        )
    return accept_description(
        hello.get("public"), hello.get("fingerprint"), "crypten", expect_fingerprint, expect_arch
    )


def model_of(public: PublicModel, max_bytes: float = DEFAULT_MAX_MODEL_BYTES):
    """(config, tokenizer or None) of the server's description; a malformed one, or one too
    large to build (`check_model_size`), is the server's fault, reported as such."""
    try:
        cfg = ModelConfig.from_dict(public.config)
    except (ConfigError, TypeError, ValueError) as error:
        raise ControlError(f"the server's model config is invalid ({one_line(error)})") from None
    check_model_size(cfg, max_bytes)
    if not public.tokenizer_json:
        return cfg, None
    try:
        return cfg, tokenizer_from_json(public.tokenizer_json)
    except Exception as error:  # the tokenizers library raises its own exception types
        raise ControlError(f"the server's tokenizer is invalid ({one_line(error)})") from None


def mpc_port_of(accept: dict) -> int:
    port = accept.get("mpc_port")
    if type(port) is not int or not 0 < port < 65536:
        raise ControlError("the server's accept message has no valid MPC port")
    return port


def query(args: argparse.Namespace) -> dict:
    """Handshake and MPC session; returns the result record (tokens, logits, costs)."""
    sock = connect(args.host, args.port, args.timeout, "server")
    with sock:
        hello = recv_message(sock, args.timeout, expect="hello")
        public = check_public_model(hello, args.expect_fingerprint, args.expect_arch)
        cfg, tokenizer = model_of(public, args.max_model_bytes)
        if args.tokens is None and tokenizer is None:
            raise UserError("the server has no tokenizer (random weights): give --tokens")
        if args.tokens:
            raw = read_token_file(args.tokens)
        else:
            raw = tokenizer.encode(prompt_text(args)).ids
        ids = validate_tokens(raw, cfg, args.max_new_tokens)
        send_message(
            sock,
            {
                "type": "request",
                "version": CONTROL_VERSION,
                "fingerprint": public.fingerprint(),
                "prompt_length": len(ids),
                "new_tokens": args.max_new_tokens,
                "all_positions": args.all_positions,
            },
        )
        # The server may first spend one timeout reaching its dealer: wait for its clear answer.
        accept = recv_message(sock, 2 * args.timeout, expect="accept")
    spec = SessionSpec(
        args.host,
        mpc_port_of(accept),
        public.dealer,
        args.timeout,
        public,
        len(ids),
        args.max_new_tokens,
        args.all_positions,
        args.threads,
    )

    def report(step: int, result) -> None:
        cost = result.steps[-1]
        print(
            f"client: token {step + 1}/{args.max_new_tokens}: id {result.tokens[-1]}, "
            f"{cost['bytes'] / 1e6:.1f} MB, {cost['rounds']:.0f} rounds, {cost['wall_s']:.2f} s",
            flush=True,
        )

    with native_stderr_to_file("aero-pi-client-"):
        progress = QueryProgress(args.progress, cfg.n_layer, args.max_new_tokens)
        try:
            result = run_party(spec, CLIENT, ids, None, on_step=report, on_layer=progress.layer)
        finally:
            progress.close()
    return {
        "arch": cfg.arch,
        "fingerprint": public.fingerprint(),
        "dealer": public.dealer,
        "trust": public.trust,
        "approx": public.settings,
        "weights": public.weights,
        "config": public.config,
        "prompt_ids": ids,
        "generated_ids": result.tokens,
        "generated_text": tokenizer.decode(result.tokens) if tokenizer else None,
        "logits": [step.tolist() for step in result.logits],
        "steps": result.steps,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mpc.client", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--prompt",
        help="prompt text (tokenized with the server's tokenizer); visible to local users in "
        "`ps`: use --prompt-file for a private prompt",
    )
    source.add_argument(
        "--prompt-file", help="file holding the prompt text, '-' for standard input (private)"
    )
    source.add_argument("--tokens", help="file of token ids (JSON list or whitespace-separated)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--max-new-tokens", type=int, default=1, help="greedy tokens to generate")
    parser.add_argument(
        "--all-positions",
        action="store_true",
        help="reveal logits of every prompt position (for perplexity)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds any wait may last (connect, handshake, rendezvous, each collective; "
        "twice that for the answer to a request, which includes the server's dealer booking)",
    )
    parser.add_argument("--expect-fingerprint", help="refuse a server whose model differs")
    parser.add_argument("--expect-arch", help="refuse a server serving another architecture")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--progress",
        choices=MODES,
        default="auto",
        help="a bar on the terminal (auto: only if stderr is one), one stdout line per block "
        "(lines), or none",
    )
    parser.add_argument(
        "--max-model-bytes",
        type=float,
        default=DEFAULT_MAX_MODEL_BYTES,
        help="refuse a server whose model's float32 parameters take more (default "
        f"{DEFAULT_MAX_MODEL_BYTES:g}): the client builds the model's skeleton",
    )
    parser.add_argument("--json-out", help="write tokens, logits and costs to this JSON file")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    if not args.max_model_bytes > 0:
        parser.error("--max-model-bytes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    from mpc.spu import spu_dispatch  # --backend spu-semi2k|spu-cheetah: mpc.spu.client

    argv, spu_exit = spu_dispatch("client", argv)
    if spu_exit is not None:
        return spu_exit
    args = parse_args(argv)
    try:
        record = query(args)
    except ServerBusy as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BUSY
    if args.json_out:
        atomic_write_json(args.json_out, record)
    total_mb = sum(step["bytes"] for step in record["steps"]) / 1e6
    wall = sum(step["wall_s"] for step in record["steps"])
    print(f"client: {record['arch']}, dealer {record['dealer']} ({record['trust']})")
    print(
        f"client: generated {record['generated_ids']} {record['generated_text']!r}; "
        f"{total_mb:.1f} MB, {wall:.2f} s"
    )
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
