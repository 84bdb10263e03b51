"""The SPU side's one settings object: protocol and approximations, recorded with every result.

Costs are "protocol as configured": the fraction bits, exp mode, GELU form and softmax form change
both the bytes and the accuracy, so each is a field here, part of the model fingerprint, and a
column of every result row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.config import JsonConfig
from mpc.forms import form_names
from mpc.spu import SpuError

PROTOCOLS = ("semi2k", "cheetah")
EXP_MODES = ("taylor", "pade")
GELU_FORMS = form_names("gelu", backend="jax")  # the registered forms with a JAX version
SOFTMAX_FORMS = ("stock", "max_free")


class SettingsError(SpuError, ValueError):
    """An SPU setting that does not exist or cannot be used."""


@dataclass(frozen=True)
class SpuSettings(JsonConfig):
    """SPU runtime and compiler settings of one secure forward pass.

    - semi2k: additive sharing with Beaver triples. SPU 0.9.5 ships only the TrustedFirstParty
      dealer for two parties: rank 0 (the SERVER) makes every triple, so it is INSECURE against
      the server (cost runs only), as CrypTen's `tfp`.
    - cheetah: dealer-free 2PC (OT + lattice HE): secure against either semi-honest party.
    - exp `taylor`: (1 + x / 2^n)^(2^n), n = `exp_iterations`; valid on about [-2^n, 0] (the
      kept logits minus the row max); masked entries may leave it: their exponentials are
      selected away (exact causal masking). `pade` is SPU's range-reduced form.
    - softmax `stock`: exp(s - max(s)) / sum (the row max costs a comparison tree); `max_free`:
      exp(s) / sum, valid only while every logit stays well below 2^(63 - 2 f) in magnitude.
    - `optimize_denominator`: SPU's compiler rewrites x / broadcast(y) as x * (1 / y), one
      reciprocal per softmax row instead of one division per entry.
    - `vocab_slice`: words per slice of the embedding and the LM head (one-hot slice times
      table slice, summed; logits slice by slice), each slice its own SPU executable so one
      product's working memory is bounded; 0 chooses the largest slice whose estimated peak
      fits `memory_budget_gb` (`vocab_slice_for`). Same values, same security: only the
      products' sizes change.
    - `mul_lsb_error` (CHEETAH): SPU's cheaper multiplication that may be off by one in the
      last bit (BumbleBee's), `trunc_msb_error`: SPU's truncation that skips the correction of
      a rare wrap-around (a large error with a small probability per element). Both trade accuracy
      for bytes under the same semi-honest security; off by default.
    """

    _what = "SPU settings"
    _error = SettingsError

    protocol: str = "semi2k"
    fraction_bits: int = 18
    exp_mode: str = "taylor"
    exp_iterations: int = 8
    gelu_form: str = "tanh"
    softmax_form: str = "stock"
    optimize_denominator: bool = True
    vocab_slice: int = 0
    memory_budget_gb: float = 16.0
    mul_lsb_error: bool = False
    trunc_msb_error: bool = False

    def __post_init__(self) -> None:
        for name, choices in (
            ("protocol", PROTOCOLS),
            ("exp_mode", EXP_MODES),
            ("gelu_form", GELU_FORMS),
            ("softmax_form", SOFTMAX_FORMS),
        ):
            if getattr(self, name) not in choices:
                raise SettingsError(f"{name}={getattr(self, name)!r}; choose one of {choices}")
        if not 8 <= self.fraction_bits <= 26:
            raise SettingsError(f"fraction_bits={self.fraction_bits} outside [8, 26] for FM64")
        if self.vocab_slice < 0:
            raise SettingsError(f"vocab_slice={self.vocab_slice}: a word count, or 0 for auto")
        if self.memory_budget_gb <= 0:
            raise SettingsError(f"memory_budget_gb={self.memory_budget_gb} must be positive")

    @property
    def backend(self) -> str:
        return f"spu-{self.protocol}"

    @property
    def dealer(self) -> str:
        """'tfp' (the server makes SEMI2K's triples: insecure) or 'none' (CHEETAH); what each
        lets whom see is `mpc.roles.TRUST_LABELS`."""
        return "tfp" if self.protocol == "semi2k" else "none"

    def runtime_config(self, profile: bool = True) -> Any:
        from spu import libspu

        kinds = {"semi2k": libspu.ProtocolKind.SEMI2K, "cheetah": libspu.ProtocolKind.CHEETAH}
        config = libspu.RuntimeConfig(
            protocol=kinds[self.protocol],
            field=libspu.FieldType.FM64,
            fxp_fraction_bits=self.fraction_bits,
        )
        modes = {"taylor": "EXP_TAYLOR", "pade": "EXP_PADE"}
        config.fxp_exp_mode = getattr(libspu.RuntimeConfig.ExpMode, modes[self.exp_mode])
        config.fxp_exp_iters = self.exp_iterations
        config.experimental_enable_colocated_optimization = True  # weights stay the server's
        config.enable_pphlo_profile = profile
        config.enable_hal_profile = profile
        config.trunc_allow_msb_error = self.trunc_msb_error
        config.cheetah_2pc_config.enable_mul_lsb_error = self.mul_lsb_error
        if self.protocol == "semi2k":
            config.beaver_type = libspu.RuntimeConfig.BeaverType.TrustedFirstParty
        return config

    def compiler_options(self) -> Any:
        from spu import libspu

        return libspu.CompilerOptions(
            enable_optimize_denominator_with_broadcast=self.optimize_denominator
        )


def settings_for_backend(backend: str, **fields: Any) -> SpuSettings:
    """Settings of a `--backend spu-semi2k|spu-cheetah` name."""
    protocol = backend.removeprefix("spu-")
    return SpuSettings(protocol=protocol, **fields)


def add_settings_arguments(parser: Any) -> None:
    """--fraction-bits, --exp-mode, ... (defaults: SpuSettings's)."""
    defaults = SpuSettings()
    group = parser.add_argument_group("SPU settings")
    group.add_argument("--fraction-bits", type=int, default=defaults.fraction_bits)
    group.add_argument("--exp-mode", choices=EXP_MODES, default=defaults.exp_mode)
    group.add_argument("--exp-iterations", type=int, default=defaults.exp_iterations)
    group.add_argument("--gelu-form", choices=GELU_FORMS, default=defaults.gelu_form)
    group.add_argument("--softmax-form", choices=SOFTMAX_FORMS, default=defaults.softmax_form)
    group.add_argument(
        "--no-denominator-optimization",
        dest="optimize_denominator",
        action="store_false",
        help="keep one division per softmax entry (SPU's compiler otherwise rewrites x / y_row "
        "as x * (1 / y_row))",
    )
    group.add_argument(
        "--vocab-slice",
        type=int,
        default=defaults.vocab_slice,
        help="words per embedding/LM-head slice (0: the largest that fits --memory-budget-gb)",
    )
    group.add_argument(
        "--memory-budget-gb", type=float, default=defaults.memory_budget_gb,
        help="peak resident memory one party may use for a vocabulary slice's product",
    )  # fmt: skip
    group.add_argument(
        "--settings-config",
        help="SpuSettings as JSON (as results record them): replaces the flags above; the "
        "protocol comes from --backend",
    )


def settings_from_arguments(backend: str, args: Any) -> SpuSettings:
    if args.settings_config:
        settings = SpuSettings.from_json_file(args.settings_config)
        return settings.replace(protocol=backend.removeprefix("spu-"))
    names = (
        "fraction_bits",
        "exp_mode",
        "exp_iterations",
        "gelu_form",
        "softmax_form",
        "optimize_denominator",
        "vocab_slice",
        "memory_budget_gb",
    )
    return settings_for_backend(backend, **{n: getattr(args, n) for n in names})


def settings_label(settings: SpuSettings) -> str:
    """The settings that change costs, for the CSV's `protocol` column ("protocol as
    configured"), e.g. 'fxp18,exp-taylor8,gelu-tanh,softmax-stock,div-opt'."""
    iterations = settings.exp_iterations if settings.exp_mode == "taylor" else ""
    parts = [
        f"fxp{settings.fraction_bits}",
        f"exp-{settings.exp_mode}{iterations}",
        f"gelu-{settings.gelu_form}",
        f"softmax-{settings.softmax_form}",
    ]
    parts.append("div-opt" if settings.optimize_denominator else "div")
    parts += [name for name, on in (("mul-lsb-err", settings.mul_lsb_error),
                                    ("trunc-msb-err", settings.trunc_msb_error)) if on]  # fmt: skip
    if settings.vocab_slice:  # the default (0) sizes slices from the budget: label the budget
        parts.append(f"vocab-slice{settings.vocab_slice}")
    elif settings.memory_budget_gb != SpuSettings.memory_budget_gb:
        parts.append(f"mem{settings.memory_budget_gb:g}GB")
    return ",".join(parts)
