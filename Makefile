# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install, open napari with the sample case, docks and model
#   make test   - create .venv, install with test extras, run the whole suite headless
# Developers: make test-fast (skips the slow marks), make lint (ruff check + format check), make typecheck (mypy),
#   make docs (the documentation site: mkdocs build --strict into site/)
# Both first run tools/system_check.sh: Qt system libraries and Xvfb, installed as root (apt) or named.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS := pyproject.toml

.PHONY: demo test test-fast lint typecheck check docs install clean-venv system-check

# Qt system libraries and (without a display) Xvfb: installed as root/with sudo, else one line saying how
system-check:
	@bash tools/system_check.sh

$(VENV)/.installed: $(DEPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU torch 2.13.0 first where this machine has it (no multi-GB CUDA download); else the normal torch
	$(PIP) install -q "torch==2.13.0" || $(PIP) install -q "torch>=2.2"
	$(PIP) install -q -e ".[pyqt5]"
	touch $@

$(VENV)/.installed-testing: $(VENV)/.installed
	$(PIP) install -q -e ".[testing]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PIP) install -q -e ".[docs]"
	touch $@

install: $(VENV)/.installed

demo: system-check $(VENV)/.installed
	@if [ -n "$$DISPLAY" ] || [ -n "$$WAYLAND_DISPLAY" ]; then \
		$(VENV)/bin/multirater demo --screenshot demo.png; \
	else \
		echo "no display: running the demo under Xvfb and saving demo.png"; \
		xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/multirater demo --screenshot demo.png --exit; \
	fi

test: system-check $(VENV)/.installed-testing
	# -X utf8: text files default to UTF-8 even after Qt resets the C locale to ASCII mid-run;
	# -n auto: one pytest-xdist worker per core (at most 4), each with one torch thread (tests/conftest.py)
	$(PY) -X utf8 -m pytest -q -n auto --maxprocesses 4

# the quick loop: everything but the subprocess / torchrun / wheel-build / crash tests (marked slow)
test-fast: system-check $(VENV)/.installed-testing
	$(PY) -X utf8 -m pytest -q -m "not slow" -n auto --maxprocesses 4

# the Qt-free core, training, inference and dev tools (see README "Developers" for the layers)
MYPY_TARGETS := -p napari_multirater.io -p napari_multirater.datasets -p napari_multirater.annotation \
	-p napari_multirater.analysis -p napari_multirater.modelfiles -m napari_multirater.progress \
	-m napari_multirater.argtypes -m napari_multirater.help_text -p napari_multirater.inference -p src_training

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(PY) -m mypy $(MYPY_TARGETS)

check: lint typecheck

# the documentation site (docs/ + mkdocs.yml) into site/; --strict: a broken link, anchor, snippet or
# docstring reference fails (never add --quiet: it hides the warnings that --strict counts).
# The CLI reference, method notes and experiment list are generated (tools/docs_hooks.py).
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean-venv:
	rm -rf $(VENV)
