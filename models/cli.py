"""Shared command-line pieces: architecture/preset arguments and one-line error exits."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

from models.config import PRESETS, ModelConfig, resolve_config
from models.errors import UserError

EXIT_USER_ERROR = 2


def add_config_args(
    parser: argparse.ArgumentParser, arch_required: bool = True, many_archs: bool = False
) -> None:
    parser.add_argument(
        "--arch",
        required=arch_required,
        nargs="+" if many_archs else None,
        help="variant name(s), e.g. baseline aero (or all)" if many_archs else "variant name",
    )
    parser.add_argument("--preset", default="small", choices=tuple(PRESETS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set n_layer=6 --set entropy_lambda=5e-5",
    )


def parse_bool(text: str) -> bool:
    """The one spelling of a boolean flag value: true/false, yes/no, on/off, 1/0 (any case);
    anything else is an error, never a silent False."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_overrides(pairs: list[str], of: type = ModelConfig, flag: str = "--set") -> dict:
    """FIELD=VALUE strings typed by each field's declared type in the dataclass `of`."""
    types = {f.name: type(f.default) for f in dataclasses.fields(of)}
    overrides = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in types:
            raise argparse.ArgumentTypeError(
                f"{flag} {pair!r}: expected FIELD=VALUE, FIELD one of {sorted(types)}"
            )
        kind = types[name]
        try:
            overrides[name] = parse_bool(text) if kind is bool else kind(text)
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"{flag} {pair!r}: not a {kind.__name__}") from None
    return overrides


def config_from_args(args: argparse.Namespace, arch: str | None = None) -> ModelConfig:
    return resolve_config(arch or args.arch, args.preset, **parse_overrides(args.set))


def run_main(main: Callable[[], int]) -> int:
    """Run a command's main; any expected failure becomes one line on stderr and a non-zero exit."""
    try:
        return main()
    except (UserError, argparse.ArgumentTypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
