# The README's two commands: `make demo` (the main job on a small default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint
setup: $(VENV)/.ready
$(VENV)/.ready: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

# Genuine two-party secure inference of every architecture (tiny preset, random weights), under
# CrypTen as shipped and under the optimized profile, side by side.
demo: setup
	$(PY) bench/run.py --arch all --preset tiny --protocol stock optimized

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
