"""The public description of a served model, the same for every backend, and its fingerprint.

Before any MPC work the server sends it on the control channel; the client recomputes the
fingerprint, can pin it (`--expect-fingerprint`), and both parties compare it again over the MPC
channel itself. It holds no weight value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from models.config import ModelConfig, canonical_arch
from mpc.roles import TRUST_LABELS
from mpc.session.control import CONTROL_VERSION, ControlError, one_line, short_repr

BACKENDS = ("crypten", "spu-semi2k", "spu-cheetah")
DEFAULT_MAX_MODEL_BYTES = 4e9  # float32 parameters: GPT-2 large (774 M) fits, XL (1.56 G) not
SIZE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "ffn_mult")


@dataclass(frozen=True)
class PublicModel:
    """Everything about the model that both parties may know.

    `settings` are the backend's own: an `mpc.approx.ApproxConfig` for CrypTen, an
    `mpc.spu.settings.SpuSettings` for SPU. `layernorm_var_scales` (CrypTen) are public
    calibration constants, one per LayerNorm in module order, that keep the MPC inverse square
    root in range; they reveal the typical activation variance. `weights` says where the weights
    came from ("random" or the checkpoint's file name).
    """

    backend: str
    config: dict[str, Any]
    settings: dict[str, Any]
    tokenizer_json: str
    dealer: str
    layernorm_var_scales: list[float] = field(default_factory=list)
    weights: str = ""

    @property
    def trust(self) -> str:
        return TRUST_LABELS[self.dealer]

    def fingerprint(self) -> str:
        body = json.dumps({"version": CONTROL_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> PublicModel:
        """A description received from a peer, checked field by field."""
        try:
            public = cls(**data)
        except TypeError as error:
            raise ControlError(f"malformed model description ({one_line(error)})") from None
        kinds = {"backend": str, "config": dict, "settings": dict, "tokenizer_json": str}
        for name, kind in {**kinds, "dealer": str, "weights": str}.items():
            if not isinstance(getattr(public, name), kind):
                kind_name = kind.__name__
                raise ControlError(f"malformed model description ({name} is not a {kind_name})")
        scales = public.layernorm_var_scales
        if not isinstance(scales, list) or not all(type(v) in (int, float) for v in scales):
            raise ControlError("malformed model description (layernorm_var_scales)")
        if public.dealer not in TRUST_LABELS:
            raise ControlError(f"unknown dealer mode {short_repr(public.dealer)}")
        if public.backend not in BACKENDS:
            raise ControlError(f"unknown backend {short_repr(public.backend)}")
        return public


def accept_description(
    data: Any,
    announced: Any,
    backend: str,
    expect_fingerprint: str | None = None,
    expect_arch: str | None = None,
) -> PublicModel:
    """The server's description, if it is well formed, hashes to the fingerprint it `announced`,
    is for `backend`, and matches what the client pinned (a fingerprint prefix, an architecture
    name); else a one-line ControlError."""
    public = PublicModel.from_dict(data)
    fingerprint = public.fingerprint()
    if fingerprint != announced:
        raise ControlError(
            "model fingerprint mismatch: the server's description does not hash "
            "to the fingerprint it announced"
        )
    if public.backend != backend:
        raise ControlError(f"the server runs {public.backend}, not {backend}")
    if expect_fingerprint and not fingerprint.startswith(expect_fingerprint.lower()):
        raise ControlError(
            f"model fingerprint mismatch: server offers {fingerprint[:12]}, "
            f"expected {expect_fingerprint[:12]}"
        )
    if expect_arch and canonical_arch(expect_arch) != public.config.get("arch"):
        raise ControlError(
            f"model mismatch: server offers {public.config.get('arch')}, "
            f"expected {canonical_arch(expect_arch)}"
        )
    return public


def check_model_size(cfg: ModelConfig, max_bytes: float = DEFAULT_MAX_MODEL_BYTES) -> None:
    """Refuse, before building anything, a model whose float32 parameters (counted from the
    config alone) exceed `max_bytes`: a client builds its skeleton from what the server
    announces, before any fingerprint it pinned could have caught a hostile one."""
    if any(type(getattr(cfg, name)) is not int for name in SIZE_FIELDS):
        raise ControlError("the server's model config has sizes that are not integers")
    size = 4 * cfg.n_params
    if size > max_bytes:
        raise ControlError(
            f"the server announces a model of {cfg.n_params / 1e6:,.0f} M parameters "
            f"({size / 1e9:,.1f} GB), more than --max-model-bytes {max_bytes / 1e9:g} GB allows"
        )
