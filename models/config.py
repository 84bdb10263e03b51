"""One frozen config for every AERO variant, a registry of named variants, and size presets.

Each registered variant is a small set of differences from the baseline (SM+LN+G, a pre-LN GPT-2).
Variant choices are strings so a config round-trips through JSON and is saved with every checkpoint
and every result.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from models.errors import UserError

NORMS = ("layernorm", "none")
FFN_ACTIVATIONS = ("gelu", "relu", "identity")
FFN_FORMS = ("standard", "fused")
FFN_WEIGHT_NORMS = ("none", "weight", "spectral")
ENTROPY_REDUCTIONS = ("sum", "mean")
ENTROPY_THRESHOLDS = ("layer_head", "head")
ENTROPY_ACCUMULATIONS = ("sum", "average")


class ConfigError(UserError, ValueError):
    """A config or architecture name that cannot be built."""


class JsonConfig:
    """JSON round trip shared by the project's frozen config dataclasses. Subclasses name what
    they configure and the error their unknown fields raise."""

    _what = "config"
    _error: type[ValueError] = ConfigError

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal configs give equal strings, for fingerprints."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json_file(cls, path: str):
        """A config saved with `to_json` (an unreadable or malformed file is a one-line error)."""
        try:
            data = json.loads(open(path).read())
        except (OSError, json.JSONDecodeError) as error:
            raise cls._error(f"cannot read the {cls._what} file {path} ({error})") from None
        if not isinstance(data, dict):
            raise cls._error(f"{path} does not hold a {cls._what} object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise cls._error(f"unknown {cls._what} fields {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class ModelConfig(JsonConfig):
    """Everything that defines one architecture. Defaults are the GPT-2-small baseline at T=128."""

    arch: str = "SM+LN+G"  # display name of the registered variant this config came from
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 128  # context length T
    vocab_size: int = 50257
    ffn_mult: int = 4  # hidden width of the standard FFN is ffn_mult * n_embd
    bias: bool = True
    layer_norm_eps: float = 1e-5
    norm: str = "layernorm"  # "none" removes every LayerNorm, the final one included
    ffn_act: str = "gelu"  # GELU is the tanh form, as in GPT-2 ("gelu_new")
    ffn_form: str = "standard"  # "fused": one d x d linear (W_in W_out collapse without activation)
    ffn_scaled: bool = False  # out = beta_l * h + (1 / alpha_l) * FFN(h)
    ffn_scale_init: float = 1.0  # initial alpha_l and beta_l (the paper leaves it open)
    ffn_weight_norm: str = "none"  # static normalization of the FFN linears
    pruned_ffn_layers: int = 0  # the k deepest layers have no FFN at all
    attn_temperature: bool = False  # learnable t in R^{H x T} dividing the attention logits
    # Causal masking is exact (the softmax zeroes future weights: models.ops). This finite fill
    # only puts future logits below every row's largest kept logit, for the MPC softmax forms that
    # take a row max; |fill| must stay inside the fixed-point ring (< 2^(62 - precision bits)).
    # Checkpoints from before exact masking hold -64 (then rows must keep a logit above -64).
    mask_value: float = -1e6
    entropy_reg: bool = False
    entropy_gamma: float = 0.2  # tolerance margin: tol = gamma * log T
    entropy_lambda: float = 1e-5  # weight of the entropy penalty in the training loss
    entropy_reduction: str = "sum"  # "sum" over batch and queries as the paper's code; or "mean"
    entropy_threshold_init: float = 0.5  # initial theta (fraction of log T); learned ends ~0.2-0.5
    # "layer_head": theta in R^{L x H}, the paper's text; "head": one H-vector shared by every
    # layer, as the released code's compute_loss (it indexes reg_threshold_weights[head] per layer).
    entropy_thresholds: str = "layer_head"
    # With the "sum" reduction: "sum" adds the penalty over the whole optimizer batch (every
    # micro-batch and device: the same for any split); "average" divides it by K micro-batches x
    # devices, as the released trainer (HF Trainer's loss / K, DDP's mean over devices). Same
    # gradient when lambda_sum = lambda_average / (K x devices); with "mean" both are the mean.
    entropy_accumulation: str = "sum"

    def __post_init__(self) -> None:
        self._check_choice("norm", NORMS)
        self._check_choice("ffn_act", FFN_ACTIVATIONS)
        self._check_choice("ffn_form", FFN_FORMS)
        self._check_choice("ffn_weight_norm", FFN_WEIGHT_NORMS)
        self._check_choice("entropy_reduction", ENTROPY_REDUCTIONS)
        self._check_choice("entropy_thresholds", ENTROPY_THRESHOLDS)
        self._check_choice("entropy_accumulation", ENTROPY_ACCUMULATIONS)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0 <= self.pruned_ffn_layers <= self.n_layer:
            raise ConfigError(f"pruned_ffn_layers={self.pruned_ffn_layers} not in [0, n_layer]")
        if self.ffn_form == "fused" and self.ffn_act != "identity":
            raise ConfigError(
                "a fused FFN has no activation (W_in W_out only collapse when linear)"
            )
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "ffn_mult"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    def _check_choice(self, field: str, choices: tuple[str, ...]) -> None:
        if getattr(self, field) not in choices:
            raise ConfigError(f"{field}={getattr(self, field)!r}; choose one of {choices}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_hidden(self) -> int:
        return self.n_embd if self.ffn_form == "fused" else self.ffn_mult * self.n_embd

    @property
    def n_params(self) -> int:
        """Parameters of the inference model (training-only entropy thresholds aside), from the
        config alone: what building this config's skeleton would allocate."""
        width, bias = self.n_embd, int(self.bias)

        def linear(fan_in: int, fan_out: int) -> int:
            return fan_in * fan_out + bias * fan_out

        norm = 2 * width if self.norm == "layernorm" else 0
        attention = linear(width, 3 * width) + linear(width, width)
        attention += self.n_head * self.block_size if self.attn_temperature else 0
        if self.ffn_form == "fused":
            ffn = linear(width, width)
        else:
            ffn = linear(width, self.ffn_hidden) + linear(self.ffn_hidden, width)
        ffn += 2 if self.ffn_scaled else 0
        ffn_layers = self.n_layer - self.pruned_ffn_layers
        tables = (self.vocab_size + self.block_size) * width
        return tables + self.n_layer * (norm + attention) + ffn_layers * (norm + ffn) + norm

    def has_ffn(self, layer: int) -> bool:
        return layer < self.n_layer - self.pruned_ffn_layers


# The AERO family, each a difference from the baseline. Keys are display names as in the paper.
_SOFTMAX_ONLY = {"norm": "none", "ffn_act": "identity"}
_SCALED_FUSED = {**_SOFTMAX_ONLY, "ffn_form": "fused", "ffn_scaled": True}
VARIANTS: dict[str, dict[str, Any]] = {
    "SM+LN+G": {},
    "SM+LN+R": {"ffn_act": "relu"},
    "SM+LN": {"ffn_act": "identity"},
    "SM+G": {"norm": "none"},
    "SM+R": {"norm": "none", "ffn_act": "relu"},
    "SM": dict(_SOFTMAX_ONLY),
    "SM+ScFFN": {**_SOFTMAX_ONLY, "ffn_scaled": True},
    "SM+ScFuFFN": dict(_SCALED_FUSED),
    # k deepest FFNs pruned; k defaults to half the depth (the paper's 12L: 6), see resolve_config.
    "SM+ScFuFFN+Prune": {**_SCALED_FUSED, "pruned_ffn_layers": -1},
    "SM(t)+ScFuFFN": {**_SCALED_FUSED, "attn_temperature": True},
    "EReg(SM(t)+ScFuFFN)": {**_SCALED_FUSED, "attn_temperature": True, "entropy_reg": True},
    # Static FFN normalizations: the paper's alternatives to scaling against entropy collapse.
    "SM+WNormFFN": {**_SOFTMAX_ONLY, "ffn_weight_norm": "weight"},
    "SM+SNormFFN": {**_SOFTMAX_ONLY, "ffn_weight_norm": "spectral"},
}
ALIASES = {"baseline": "SM+LN+G", "aero": "EReg(SM(t)+ScFuFFN)"}

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 512},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "vocab_size": 4096},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 128, "vocab_size": 50257},
}


def _name_key(name: str) -> str:
    """Case-, separator- and bracket-insensitive key: 'SM(t)+ScFuFFN' == 'sm-t-scfuffn'."""
    return re.sub(r"[\s+\-_()]", "", name.lower())


_BY_KEY = {_name_key(n): n for n in VARIANTS} | {_name_key(a): n for a, n in ALIASES.items()}


def canonical_arch(name: str) -> str:
    """The registered display name for a user-typed architecture name."""
    found = _BY_KEY.get(_name_key(name))
    if found is None:
        known = ", ".join(list(VARIANTS) + list(ALIASES))
        raise ConfigError(f"unknown architecture {name!r}; known: {known}")
    return found


def resolve_config(arch: str, preset: str = "gpt2", **overrides: Any) -> ModelConfig:
    """Build the config of a named variant at a size preset, with explicit field overrides last."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {tuple(PRESETS)}")
    display = canonical_arch(arch)
    fields: dict[str, Any] = {"arch": display, **PRESETS[preset], **VARIANTS[display]}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if fields.get("pruned_ffn_layers") == -1:
        fields["pruned_ffn_layers"] = fields["n_layer"] // 2
    return ModelConfig(**fields)


def expand_arch_names(names: list[str]) -> list[str]:
    """Canonical names for a command-line list; 'all' means every registered variant."""
    if any(n.lower() == "all" for n in names):
        return list(VARIANTS)
    return [canonical_arch(n) for n in names]
