"""SecretFlow SPU as a second two-party backend: the same models, the same CSV.

`jax_model` writes the forward pass of every AERO variant in JAX as a chain of stages, one per
operation category, fed the plain weights of a torch checkpoint; `settings` holds the SPU knobs
(protocol, fraction bits, exp mode, GELU and softmax forms); `session` runs the stages as split
executables on one SPU Runtime over a brpc link and charges each stage's traffic (from SPU's
profile log) to its category; `server` and `client` are the two programs.

SPU is an optional extra (`pip install -e ".[spu]"`); nothing else in the project imports it.
"""

from models.errors import UserError

BACKENDS = ("spu-semi2k", "spu-cheetah")


class SpuError(UserError, RuntimeError):
    """A failure of the SPU backend: missing install, peer gone, mismatched programs."""


def spu_dispatch(program: str, argv: list[str] | None) -> tuple[list[str], int | None]:
    """`--backend` for the CrypTen programs (`mpc.server`, `mpc.client`): with `--backend
    spu-semi2k|spu-cheetah` run the SPU program of that name (its exit code is returned); with
    `--backend crypten` (the default) drop the flag and let the CrypTen program go on."""
    import importlib
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    backend = None
    for i, item in enumerate(argv):
        if item == "--backend" and i + 1 < len(argv):
            backend = argv[i + 1]
        elif item.startswith("--backend="):
            backend = item.split("=", 1)[1]
    if backend in BACKENDS:
        return argv, importlib.import_module(f"mpc.spu.{program}").main(argv)
    if backend == "crypten":
        argv = [a for i, a in enumerate(argv) if not _is_crypten_flag(argv, i)]
    return argv, None


def _is_crypten_flag(argv: list[str], i: int) -> bool:
    item = argv[i]
    if item == "--backend=crypten" or (item == "--backend" and argv[i + 1 : i + 2] == ["crypten"]):
        return True
    return item == "crypten" and i > 0 and argv[i - 1] == "--backend"
