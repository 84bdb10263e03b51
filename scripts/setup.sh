#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything the project and its
# tests need. Safe to rerun. The order matters:
#   1. torch==2.13.0 first: pip takes the CPU build on this disk, so nothing later pulls a CUDA build;
#   2. the project with its test extras and the SPU extra (SecretFlow SPU 0.9.5 + jax 0.4.34, the
#      second backend; skip it with NO_SPU=1: its tests then skip);
#   3. crypten 0.4.1 WITHOUT its declared dependencies: they name the deprecated "sklearn" package
#      and torchvision, neither installable beside torch 2.13 (pyproject cannot say "no deps" for
#      one package, hence this script). What `import crypten` really needs is in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install "torch==2.13.0"
if [ "${NO_SPU:-0}" = 1 ]; then pip install -e ".[test]"; else pip install -e ".[test,spu]"; fi
pip install --no-deps "crypten==0.4.1"
"$VENV/bin/python" -c "from mpc.compat import import_crypten; import_crypten()"
[ "${NO_SPU:-0}" = 1 ] || "$VENV/bin/python" -c "import spu, jax, numpy; assert numpy.__version__ < '2'"
echo "environment ready: $VENV"
