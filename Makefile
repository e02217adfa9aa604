# fedcredit — see README.md. `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
PROTOS := $(wildcard proto/fedcredit/v1/*.proto)

.PHONY: setup dev test lint importlint typecheck pytest proto bench demo clean screenshots image compose-test

# `setup` installs what running fedcredit needs (enough for `make demo`); `dev` adds
# the test, lint, type-check and code-generation tools on top.
setup: $(STAMP)

dev: $(DEVSTAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

$(DEVSTAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(DEVSTAMP)

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The layer contract in pyproject.toml ([tool.importlinter]).
importlint: dev
	$(VENV)/bin/lint-imports

typecheck: dev
	$(VENV)/bin/mypy

pytest: dev
	$(VENV)/bin/pytest -n 2 --dist loadgroup -q

test: lint importlint typecheck pytest

proto: dev
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iproto --python_out=proto --grpc_python_out=proto \
	  --mypy_out=proto --mypy_grpc_out=proto $(PROTOS)

bench: setup
	$(PY) -m bench.run_all
	$(PY) -m bench.run_all --readme README.md

# Each role's main portal page, by the same browser tests that check them (Chromium).
screenshots: dev
	FEDCREDIT_SCREENSHOTS=docs/screenshots $(VENV)/bin/pytest -q -p no:randomly -n 0 tests/portal/test_accessibility.py -k accessible

demo: setup
	$(VENV)/bin/fedcredit demo

# Containers (README, "Deployment"): as root, with Debian's docker.io, docker-compose and
# debootstrap. Each starts dockerd when none runs, and stops it again if it started it.
image: setup
	deploy/docker/with-dockerd.sh deploy/docker/build.sh

compose-test: setup
	deploy/docker/with-dockerd.sh sh -c 'deploy/docker/build.sh && $(PY) -m fedcredit.clients.containers_story'

clean:
	rm -rf $(VENV) var build *.egg-info
