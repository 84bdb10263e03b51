"""Every program's bad flag values end as one line on stderr ("error: ...") and exit code 2,
never a traceback: values argparse accepts but the program cannot use (an approximation setting,
an architecture, a config field, a missing file, an unreachable peer)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mpc.session.local import free_port

REPO = Path(__file__).resolve().parents[1]
EXIT_USER_ERROR = 2
MISSING = "/nonexistent/aero-pi/file"

CASES = [
    (["-m", "mpc.server", "--random-arch", "baseline", "--preset", "tiny", "--precision-bits",
      "30"], "precision_bits=30"),
    (["-m", "mpc.server", "--random-arch", "baseline", "--preset", "tiny", "--exp-iterations",
      "14"], "exp_iterations=14"),
    (["-m", "mpc.server", "--random-arch", "baseline", "--preset", "tiny", "--set",
      "n_head=3"], "n_head"),
    (["-m", "mpc.server", "--random-arch", "baseline", "--preset", "tiny", "--set",
      "attn_temperature=maybe"], "attn_temperature"),
    (["-m", "mpc.server", "--checkpoint", MISSING], "no checkpoint"),
    (["-m", "mpc.client", "--tokens", MISSING, "--port", "{port}", "--timeout", "1"],
     "cannot reach"),
    (["-m", "mpc.accuracy", "--checkpoint", MISSING], MISSING),
    (["-m", "models.train", "--arch", "gpt5", "--preset", "tiny"], "unknown architecture"),
    (["-m", "models.train", "--arch", "aero", "--preset", "tiny", "--set", "n_layer=x"],
     "not a int"),
    (["-m", "models.analyze", "--checkpoint", MISSING, "--out", "/tmp/x"], MISSING),
    (["bench/run.py", "--arch", "gpt5"], "unknown architecture"),
    (["bench/run.py", "--arch", "baseline", "--preset", "tiny", "--sqrt-iterations", "0"],
     "sqrt_iterations"),
    (["bench/run.py", "--arch", "baseline", "--preset", "tiny", "--seq-len", "99"],
     "--seq-len 99"),
    (["bench/run.py", "--arch", "baseline", "--preset", "tiny", "--backend", "spu-semi2k",
      "--network", "wan"], "runs on loopback only"),
    (["bench/run.py", "--arch", "baseline", "--preset", "tiny", "--backend", "spu-cheetah",
      "--spu-set", "vocab_slice=many"], "not a int"),
    (["bench/run.py", "--arch", "baseline", "--preset", "tiny", "--backend", "spu-cheetah",
      "--spu-set", "vocab_slice=-1"], "vocab_slice=-1"),
    (["bench/run.py", "--arch", "baseline", "--preset", "tiny", "--backend", "spu-cheetah",
      "--spu-set", "protocol=semi2k"], "the backend's"),
    (["-m", "bench.collect", MISSING], "no client-N.json"),
    (["-m", "bench.plot", MISSING], MISSING),
    (["-m", "bench.train_speed", "--arch", "gpt5"], "unknown architecture"),
    (["bench/reproduce.py", "--budget", "small", "--variants", "gpt5"], "unknown architecture"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=lambda c: " ".join(c)[:60])
def test_bad_flag_values_are_one_line_errors(argv, fragment, tmp_path):
    argv = [a.replace("{port}", str(free_port())) for a in argv]
    done = subprocess.run(
        [sys.executable, *argv], cwd=tmp_path if argv[0] == "-m" else REPO,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == EXIT_USER_ERROR, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert fragment in lines[0], lines[0]
