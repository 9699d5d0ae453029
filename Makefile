# vmoverlay: the two commands a newcomer runs (as root, on Debian/Ubuntu):
#   make lab    the main job: the lab's migration-resilience gate on defaults
#   make test   the whole test suite, with ruff and mypy
# Both bootstrap what they need (Debian packages, .venv) first.

VENV := .venv
PY := $(VENV)/bin/python
PRODUCT := vmoverlay vxlan_manager ipam cni e2e
PYTEST_ARGS ?=
LAB_ARGS ?=

.PHONY: all bootstrap test lint typecheck unit lab lab-down bench clean help

all: help

help:
	@echo "make lab        run the migration-resilience gate on a lab cluster (root)"
	@echo "make test       ruff + mypy + the whole pytest suite (root)"
	@echo "make lint       ruff format check and lint only"
	@echo "make lab-down   remove leftovers of a crashed lab run"
	@echo "make bench      run the benchmarks and print their figures"

bootstrap:
	@MAKE_TARGET=$(MAKECMDGOALS) scripts/bootstrap.sh

lint: bootstrap
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

typecheck: bootstrap
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

lab: bootstrap
	$(VENV)/bin/vmoverlay-lab gate $(LAB_ARGS)

lab-down: bootstrap
	$(VENV)/bin/vmoverlay-lab down

bench: bootstrap
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
