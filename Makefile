# The README's two commands: `make demo` (the main job on a small default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint
setup: $(VENV)/.ready
$(VENV)/.ready: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

demo: setup
	$(PY) -m models.train --arch baseline --preset small --steps 200 --out runs/demo-baseline.pt
	$(PY) -m models.train --arch aero --preset small --steps 200 --out runs/demo-aero.pt
	$(PY) -m models.analyze --checkpoint runs/demo-aero.pt --out runs/demo-aero-entropy

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
