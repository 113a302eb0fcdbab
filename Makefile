# memwarden: the two commands of the README are `make demo` and `make test`.
# Every target installs what it needs first (hack/bootstrap.sh is idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: help bootstrap lint test test-unit test-integration cluster-up cluster-down demo demo-down crds chart-lint image bench clean

help:
	@echo "make demo         bring up the local environment and show memwarden at work"
	@echo "make test         lint + the whole test suite (unit, integration, end-to-end)"
	@echo "make cluster-up   start the local control plane (.devcluster/kubeconfig)"
	@echo "make cluster-down stop it"
	@echo "make image        OCI archives of the operator, toolbox and leaky images in dist/images/ (root)"

bootstrap:
	@bash hack/bootstrap.sh

lint: bootstrap
	ruff check .
	ruff format --check .
	mypy
	lint-imports
	deptry operator

test: lint
	$(PY) -m pytest tests

test-unit: bootstrap
	$(PY) -m pytest -m unit tests

test-integration: bootstrap
	$(PY) -m pytest -m "integration or e2e" tests

cluster-up: bootstrap
	$(PY) hack/devcluster.py up

cluster-down:
	@if [[ -x $(PY) ]]; then $(PY) hack/devcluster.py down; fi

demo: bootstrap
	$(PY) hack/demo.py up

demo-down:
	@if [[ -x $(PY) ]]; then $(PY) hack/demo.py down; fi

crds: bootstrap
	.venv/bin/memwarden crds --write crds/
	cp crds/*.yaml charts/memwarden/crds/
	PYTHONPATH=operator $(PY) hack/crd_docs.py docs/api.md
	PYTHONPATH=operator $(PY) hack/settings_docs.py docs/settings.md

# No Docker daemon: mmdebstrap + the locked environment, cached in ~/.cache/memwarden/images
# (docs/image.md). Minutes the first time, seconds when nothing changed.
image: bootstrap
	$(PY) hack/image/build.py

chart-lint: bootstrap
	$$(bash hack/helm/build.sh) lint --strict charts/memwarden

bench: bootstrap
	$(PY) bench/run_all.py

clean: demo-down cluster-down
	rm -rf .devcluster .venv
