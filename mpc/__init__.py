"""Secure inference: CrypTen compatibility, the encrypted model, server, client and dealer."""

import os

# torch's C++ layer logs peer failures as multi-line stack traces on stderr; our programs report
# each failure as one line instead. Set TORCH_CPP_LOG_LEVEL=INFO to see them when debugging.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
