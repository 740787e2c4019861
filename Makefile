# Two commands do everything on a fresh clone (Python 3.11, Linux):
#   make run    set up .venv, run a 100-client federated simulation on real MNIST, write its report
#   make test   set up .venv, run every test (unit, simulation and deployment end to end)
# Also: make test-fast (unit tests only), make lint (ruff: style and formatting; import-linter: which package
# may import which, the contracts in pyproject.toml), make clean.

SHELL := bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A system-wide pip config may list package folders that do not exist; pip then warns about each. Drop those lines only.
PIP_NOISE := is ignored: it is neither a file nor a directory
# The wheels deploy/prepare.sh keeps for the image (PyTorch with CUDA: about 3 GB) serve the venv too,
# instead of a second download and a second copy in pip's cache.
WHEELHOUSE := $(if $(wildcard deploy/wheelhouse/*.whl),--find-links deploy/wheelhouse --no-cache-dir)

.PHONY: setup run test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (set PYTHON=python3.11)"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(WHEELHOUSE) -e ".[test]" 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m launcher.simulate --num-supernodes 100 --output-dir outputs --report

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache --no-logo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
