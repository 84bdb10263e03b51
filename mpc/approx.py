"""The one object holding every secure-computation approximation knob, and how CrypTen gets it.

An `ApproxConfig` is recorded with every run and is part of the parties' handshake fingerprint, so
its fields are JSON scalars only. `apply_to_crypten` writes it into `crypten.cfg` key by key:
`crypten.init(config_file=...)` would replace CrypTen's whole config, dropping every other key.
Defaults are the settings measured accurate on trained GPT-2-like models; the measured error of
each form is in its docstring in `mpc.forms`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from models.cli import parse_bool
from models.config import JsonConfig
from models.errors import UserError
from mpc.compat import import_crypten
from mpc.forms import form, form_names

RECIPROCAL_METHODS = ("NR", "log")
SIGMOID_TANH_METHODS = ("reciprocal", "chebyshev")
GELU_FORMS = form_names("gelu")  # the registry (mpc.forms) is the one list of forms
SOFTMAX_FORMS = form_names("softmax")
LAYERNORM_FORMS = form_names("layernorm")
COMPARISONS = ("stock", "packed", "packed4")
SOFTMAX_RECIPROCALS = ("newton", "bracketed")
POSITIVE_INT_FIELDS = (
    "precision_bits",
    "exp_iterations",
    "reciprocal_iterations",
    "sqrt_iterations",
    "erf_iterations",
)
CHOICES = {
    "reciprocal_method": RECIPROCAL_METHODS,
    "sigmoid_tanh_method": SIGMOID_TANH_METHODS,
    "gelu_form": GELU_FORMS,
    "softmax_form": SOFTMAX_FORMS,
    "layernorm_form": LAYERNORM_FORMS,
    "comparison": COMPARISONS,
    "softmax_reciprocal": SOFTMAX_RECIPROCALS,
}
MAX_PRECISION_BITS = 20
MAX_SOFTMAX_LOGIT_BOUND = 4.0


class ApproxError(UserError, ValueError):
    """An approximation setting that cannot be used (or does not match CrypTen's state)."""


@dataclass(frozen=True)
class ApproxConfig(JsonConfig):
    """Every approximation knob of the encrypted forward pass.

    The inverse square root has one iteration count, `sqrt_iterations`: LayerNorm is its only user
    in this project, so a separate LayerNorm knob would only be a second name for the same key.
    `reciprocal_iterations` drives the Newton method ("NR"); the "log" method uses CrypTen's log
    settings (its own iteration key is ignored by CrypTen 0.4.1).
    """

    _what, _error = "approximation", ApproxError  # for JsonConfig.from_dict; not fields

    precision_bits: int = 16  # fixed-point fraction bits; more than 20 wraps on truncation
    exp_iterations: int = 8  # limit-form exp (1 + x / 2^n)^(2^n); accurate on about [-16, 0]
    reciprocal_method: str = "NR"
    reciprocal_iterations: int = 10
    sqrt_iterations: int = 5  # inverse square root (LayerNorm); 4-6 is the measured sweet spot
    # "chebyshev" fits tanh on [-1, 1] only: the tanh GELU is then wrong past |x| ~ 1 (7e-2 at 2)
    sigmoid_tanh_method: str = "reciprocal"
    erf_iterations: int = 8  # Taylor terms of erf (only the "erf" GELU form uses it)
    gelu_form: str = "poly"  # relu(x) - p(min(|x|, 4)): 2e-4 from GPT-2's GELU at any |x|
    softmax_form: str = "stock"  # CrypTen's, with the row max: any row, masked by -64
    # Max-free softmax only: accurate when each row's max logit lies in [-b, b]. The window is
    # narrow because 16 fraction bits give exp and reciprocal ~2^16 of dynamic range.
    softmax_logit_bound: float = 2.5
    # The tree and max-free softmaxes' reciprocal of the row sums: "newton" (CrypTen's: an
    # exp-based guess and reciprocal_iterations steps, 28 rounds) or "bracketed" (a comparison
    # against quarter-octave thresholds in the sums' known range, then 2 steps: 8 rounds with
    # radix-4 packed comparisons; mpc.forms.softmax.bracketed_reciprocal)
    softmax_reciprocal: str = "newton"
    # "range_reduced": each row brought near variance 1 by a secret power of two first; accurate
    # for row variances 1e-6 .. 1e6 times the calibrated scale (public_scale: 0.1 .. 100), at
    # about twice the bytes of a LayerNorm (mpc.forms.layernorm)
    layernorm_form: str = "public_scale"
    # Protocol knobs (mpc.optimized: beaver, weight_masks, packed_compare): the same numbers,
    # fewer bytes, rounds or seconds. PROFILES names the two standard settings.
    weight_masks: bool = False  # share each weight once per model; queries open only X - A
    fast_matmul: bool = False  # exact int64 products through float64 BLAS (CPU time only)
    comparison: str = "stock"  # "packed": carry-only, bit-sliced less-than-zero (~4.7x fewer B)
    # Openings and reveals on one TCP connection between the parties instead of gloo's
    # collectives (mpc.session.transport): half a round trip per round instead of about two.
    pair_channel: bool = False
    # ttp: the dealer's whole material of a query in one message before the prompt is shared,
    # no dealer round trip online (mpc.optimized.offline_dealer)
    offline_dealer: bool = False
    # relu(x) = x [x >= 0] with the multiply folded into the comparison's last opening: one round
    # less per ReLU and per tree-max level (mpc.optimized.packed_compare.packed_relu); needs the
    # pair channel and a packed comparison
    fused_relu: bool = False
    # the scaled FFN's gain 1 / alpha folded into its last linear by the server (plaintext, before
    # sharing): one secret multiply per layer less (mpc.session.secure_model.fold_ffn_gains)
    fold_gains: bool = False

    def __post_init__(self) -> None:
        for name in POSITIVE_INT_FIELDS:
            self._check_int(name)
        if self.precision_bits > MAX_PRECISION_BITS:
            raise ApproxError(
                f"precision_bits={self.precision_bits} > {MAX_PRECISION_BITS}: at 24+ bits "
                "CrypTen's truncation wraps by 2^(64 - 2p) at once; keep 16 (20 at most)"
            )
        if self.precision_bits < 10:
            raise ApproxError(f"precision_bits={self.precision_bits} < 10 is too coarse; use 16")
        if self.exp_iterations > self.precision_bits - 4:
            raise ApproxError(
                f"exp_iterations={self.exp_iterations} > precision_bits - 4: x / 2^n then "
                "falls below the fixed-point resolution (8-10 is the sweet spot)"
            )
        self._check_choice("reciprocal_method", RECIPROCAL_METHODS)
        self._check_choice("sigmoid_tanh_method", SIGMOID_TANH_METHODS)
        self._check_choice("gelu_form", GELU_FORMS)
        self._check_choice("softmax_form", SOFTMAX_FORMS)
        self._check_choice("layernorm_form", LAYERNORM_FORMS)
        self._check_choice("comparison", COMPARISONS)
        self._check_choice("softmax_reciprocal", SOFTMAX_RECIPROCALS)
        knobs = ("weight_masks", "fast_matmul", "pair_channel", "offline_dealer", "fused_relu")
        for name in (*knobs, "fold_gains"):
            if not isinstance(getattr(self, name), bool):
                raise ApproxError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.fused_relu and not (self.pair_channel and self.comparison != "stock"):
            raise ApproxError(
                "fused_relu needs pair_channel=true and a packed comparison: it opens XOR and "
                "additive shares in one exchange, which gloo's collectives cannot"
            )
        bound = self.softmax_logit_bound
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise ApproxError(f"softmax_logit_bound must be a number, got {bound!r}")
        if not 0 < bound <= MAX_SOFTMAX_LOGIT_BOUND:
            raise ApproxError(
                f"softmax_logit_bound={bound} not in (0, {MAX_SOFTMAX_LOGIT_BOUND}]: the "
                "max-free softmax has a ~2^16 dynamic range; use softmax_form='stock'"
            )
        object.__setattr__(self, "softmax_logit_bound", float(bound))  # 3 and 3.0 fingerprint alike

    def _check_int(self, name: str) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApproxError(f"{name} must be a positive int, got {value!r}")

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            raise ApproxError(f"{name}={getattr(self, name)!r}; choose one of {choices}")


def check_context(approx: ApproxConfig, block_size: int) -> None:
    """Refuse a softmax form that is not accurate on the model's longest attention row."""
    longest = form("softmax", approx.softmax_form).max_row
    if longest is not None and block_size > longest:
        raise ApproxError(
            f"softmax_form={approx.softmax_form} is accurate on rows of at most {longest} "
            f"entries (its reciprocal overflows near 256), but the context is {block_size}: "
            "use --softmax-form tree"
        )


# The protocol knobs of each named profile; "stock" is CrypTen 0.4.1 as shipped.
PROFILES: dict[str, dict[str, Any]] = {
    "stock": {
        "weight_masks": False,
        "fast_matmul": False,
        "comparison": "stock",
        "softmax_form": "stock",
        "pair_channel": False,
        "offline_dealer": False,
        "fused_relu": False,
        "fold_gains": False,
        "softmax_reciprocal": "newton",
        "gelu_form": "poly",
        "layernorm_form": "public_scale",
    },
    "optimized": {
        "weight_masks": True,
        "fast_matmul": True,
        "comparison": "packed4",
        "softmax_form": "tree",
        "pair_channel": True,
        "offline_dealer": True,
        "fused_relu": True,
        "fold_gains": True,
        "softmax_reciprocal": "bracketed",
        "gelu_form": "poly_relu",
        "layernorm_form": "bracketed",
    },
}


# Approximation choices that change the computed function or its valid range, not only its
# cost: every profile keeps them (a max-free softmax, a tanh or erf GELU, the range-reduced
# LayerNorm); the profiles' own forms compute the same function on the same range.
KEPT_CHOICES = {
    "softmax_form": ("max_free",),
    "gelu_form": ("tanh", "erf"),
    "layernorm_form": ("range_reduced",),
}


def profile_knobs(approx: ApproxConfig, profile: str) -> dict[str, Any]:
    """The knobs `profile` sets on `approx`: all of PROFILES[profile] but the kept choices."""
    if profile not in PROFILES:
        raise ApproxError(f"unknown protocol profile {profile!r}; choose {list(PROFILES)}")
    kept = {name for name, values in KEPT_CHOICES.items() if getattr(approx, name) in values}
    return {k: v for k, v in PROFILES[profile].items() if k not in kept}


def with_profile(approx: ApproxConfig, profile: str) -> ApproxConfig:
    """`approx` with the protocol knobs of a named profile (kept choices stay)."""
    return approx.replace(**profile_knobs(approx, profile))


def profile_name(approx: ApproxConfig) -> str:
    """ "stock" or "optimized" when every protocol knob matches that profile, else "custom"."""
    for name in PROFILES:
        if all(getattr(approx, k) == v for k, v in profile_knobs(approx, name).items()):
            return name
    return "custom"


def add_approx_arguments(parser: argparse.ArgumentParser, many_protocols: bool = False) -> None:
    """One flag per field (`--gelu-form`, `--sqrt-iterations`, ...); unset flags keep defaults.
    `--protocol stock|optimized` sets the protocol knobs first; single flags override them
    (`many_protocols`: the benchmark takes several profiles and measures each)."""
    group = parser.add_argument_group("approximations and protocol (mpc.approx.ApproxConfig)")
    group.add_argument(
        "--approx-config", metavar="FILE", help="a whole ApproxConfig as JSON; flags override it"
    )
    group.add_argument(
        "--protocol",
        choices=list(PROFILES),
        nargs="+" if many_protocols else None,
        help="protocol profile(s) (default: stock, CrypTen as shipped)",
    )
    for field in dataclasses.fields(ApproxConfig):
        kind = type(field.default)
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            type=parse_bool if kind is bool else kind,
            choices=CHOICES.get(field.name),
            help=f"default: {field.default}",
        )


def approx_from_arguments(args: argparse.Namespace, profile: str | None = None) -> ApproxConfig:
    """The config the flags of `add_approx_arguments` describe, under protocol `profile`
    (default: the one `--protocol` names). Unset flags keep the values of `--approx-config`
    (a JSON file of a whole config: how one program hands its config to another), else the
    defaults."""
    names = [field.name for field in dataclasses.fields(ApproxConfig)]
    given = {name: getattr(args, name, None) for name in names}
    base = ApproxConfig()
    if getattr(args, "approx_config", None):
        base = ApproxConfig.from_json_file(args.approx_config)
    approx = base.replace(**{name: value for name, value in given.items() if value is not None})
    if profile is None and isinstance(getattr(args, "protocol", None), str):
        profile = args.protocol
    if profile is None:
        return approx
    knobs = {k: v for k, v in profile_knobs(approx, profile).items() if given.get(k) is None}
    return approx.replace(**knobs)


def crypten_keys(approx: ApproxConfig) -> dict[str, Any]:
    """The `crypten.cfg` keys (dotted, as in CrypTen's configs/default.yaml) this config sets."""
    return {
        "encoder.precision_bits": approx.precision_bits,
        **function_keys(approx),
    }


def function_keys(approx: ApproxConfig) -> dict[str, Any]:
    """The keys read when a function is evaluated (all but the encoder's precision)."""
    return {
        "functions.exp_iterations": approx.exp_iterations,
        "functions.reciprocal_method": approx.reciprocal_method,
        "functions.reciprocal_nr_iters": approx.reciprocal_iterations,
        "functions.sqrt_nr_iters": approx.sqrt_iterations,
        "functions.sigmoid_tanh_method": approx.sigmoid_tanh_method,
        "functions.erf_iterations": approx.erf_iterations,
    }


def apply_to_crypten(
    approx: ApproxConfig, keys: dict[str, Any] | None = None
) -> contextlib.AbstractContextManager[None]:
    """Set CrypTen's config keys from `approx` now; as a context manager, restore them on exit.

    Call it once per party before encrypting anything (the precision is read when a tensor is
    encoded); before or after `crypten.init()` alike, as init without a config file keeps the
    keys. Or use `with apply_to_crypten(approx): ...` for a scope.
    `keys` overrides which keys are written (default: `crypten_keys(approx)`).
    """
    cfg = import_crypten().cfg
    keys = crypten_keys(approx) if keys is None else keys
    previous = {key: cfg[key] for key in keys}
    for key, value in keys.items():
        cfg[key] = value
    return _restoring(cfg, previous)


@contextlib.contextmanager
def _restoring(cfg: Any, previous: dict[str, Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for key, value in previous.items():
            cfg[key] = value
