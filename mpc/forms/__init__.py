"""The registry of nonlinearity forms: every way this project computes GELU, ReLU, softmax and
LayerNorm under MPC, each naming its implementation and its cost formula side by side.

A `Form` holds
  * `crypten(x, ..., approx)`: the CrypTen implementation (`mpc.ops.CryptenOps` calls it), whose
    docstring states the input range it is accurate on and the error measured there;
  * `cost(p, shape)`: the bytes and rounds one party logs for exactly those operations, composed
    from the primitives of `p`, a `mpc.cost.primitives.CrypTenCosts` (`mpc.cost.walk` calls it;
    the session tests check it against measurements, byte for byte);
  * `jax(x)`: the same function in JAX for the SPU backend, where one exists (`mpc.spu`).
The choices an `ApproxConfig` accepts (`gelu_form`, `softmax_form`) are the names registered
here. Adding a form means adding one entry to the module of its kind, plus its tests.
"""

from __future__ import annotations

from mpc.forms.activations import GELU, RELU
from mpc.forms.base import Form
from mpc.forms.layernorm import LAYERNORM
from mpc.forms.softmax import SOFTMAX

FORMS: dict[str, dict[str, Form]] = {
    "gelu": GELU,
    "relu": RELU,
    "softmax": SOFTMAX,
    "layernorm": LAYERNORM,
}


def form(kind: str, name: str) -> Form:
    """The registered form `name` of nonlinearity `kind` ("gelu", "relu", "softmax", ...)."""
    return FORMS[kind][name]


def form_names(kind: str, backend: str = "crypten") -> tuple[str, ...]:
    """The names of `kind`'s forms a backend implements ("crypten": all, "jax": SPU's)."""
    return tuple(n for n, f in FORMS[kind].items() if backend == "crypten" or f.jax is not None)
