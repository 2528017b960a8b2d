# Stratolab: `make run` sets everything up and starts the platform; `make test` sets up and runs the suite.
# Every step is idempotent and keyed on stamp files in .make/, so a second `make run` starts in seconds.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMPS := .make
EXT_DIR := extensions/stratolab-lab
# pip's notes about find-links folders that this machine's pip.conf names but does not have are noise.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
# pip options for torch's CPU build (a local +cpu wheel, or PyTorch's CPU index when it answers), for
# every user: PyPI's default torch is a CUDA build with 2.7 GB of nvidia-* packages. The folders looked
# in are TORCH_CPU_WHEELS (default /opt/wheels); see tools/build_env.py.
TORCH_PIP = $(abspath tools/build_env.py) torch-pip
# npm's CA file, registry and proxies handed to jlpm (Yarn 3 reads none of npm's configuration).
YARN_ENV = $(abspath tools/build_env.py) yarn-env
IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo yes)

# The user environment is where single-user servers and kernels run. As an ordinary user it is the
# project's own virtual environment. As root, servers run under per-user system accounts, which cannot
# read a clone under /root nor an interpreter under /root/.pyenv: the user environment then lives in a
# world-readable place, built from the system's interpreter (as The Littlest JupyterHub's /opt/tljh/user).
ifeq ($(IS_ROOT),yes)
USER_ENV ?= /opt/stratolab/user-env
USER_PYTHON ?= $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || command -v $(PYTHON))
else
USER_ENV ?= $(abspath $(VENV))
endif
export STRATOLAB_USER_ENV := $(abspath $(USER_ENV))

PY_SOURCES := $(shell find stratolab -name '*.py' -o -name '*.c' -o -name '*.html' -o -name '*.ini' -o -name '*.mako' -o -name '*.bashrc' 2>/dev/null)
EXT_SOURCES := $(shell find $(EXT_DIR)/src $(EXT_DIR)/style $(EXT_DIR)/schema -type f 2>/dev/null) $(EXT_DIR)/package.json $(EXT_DIR)/tsconfig.json $(EXT_DIR)/yarn.lock

.PHONY: help setup run check ext-check test bench clean chromium

help:
	@echo "make run    set up (venv, npm packages, lab extension) and start the hub on http://127.0.0.1:$${STRATOLAB_PORT:-8000}"
	@echo "make test   set up, lint and type-check (make check), and run the whole test suite"
	@echo "make check  ruff (the whole tree) and mypy (the stratolab package)"
	@echo "make ext-check  the lab extension's jest tests, eslint and prettier (after its set-up)"
	@echo "make bench  set up and run every benchmark (JSON on stdout, the goals table on stderr)"
	@echo "make clean  remove build outputs (keeps .stratolab/ state)"

$(STAMPS):
	@mkdir -p $(STAMPS)

# 1. The project's virtual environment, with the package installed editable, the hub's proxy (Traefik) and
#    what the tests need.
$(STAMPS)/venv: pyproject.toml hatch_build.py stratolab/platform/_call_writer.c | $(STAMPS)
	@echo "==> Python environment in $(VENV)"
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip $(QUIET_PIP)
	@mkdir -p stratolab/labextension
	@torch=$$($(BIN)/python $(TORCH_PIP)) && $(BIN)/python -m pip install -q -e '.[hub,test]' $$torch $(QUIET_PIP)
	@touch $@

# 2. Node tools for the hub: configurable-http-proxy (STRATOLAB_PROXY=configurable-http-proxy; the default
#    proxy is Traefik, from step 1), installed into the clone, not globally.
$(STAMPS)/node: package.json | $(STAMPS)
	@echo "==> configurable-http-proxy (npm)"
	@npm install --no-audit --no-fund --no-update-notifier --loglevel=error
	@touch $@

# 3. The JupyterLab extension, built with the jlpm that ships with JupyterLab.
$(STAMPS)/extension: $(STAMPS)/venv $(EXT_SOURCES)
	@echo "==> JupyterLab extension ($(EXT_DIR))"
	@cd $(EXT_DIR) && yarn_env=$$($(BIN)/python $(YARN_ENV)) && eval "$$yarn_env" && \
	  PATH=$(BIN):$$PATH jlpm install --silent && PATH=$(BIN):$$PATH jlpm build:prod
	@$(BIN)/jupyter-builder develop --overwrite --log-level=WARN . >/dev/null
	@touch $@

# 4. The user environment (root only: a separate, world-readable install of the same package).
$(STAMPS)/user-env: $(STAMPS)/extension $(PY_SOURCES) | $(STAMPS)
ifeq ($(IS_ROOT),yes)
	@echo "==> user environment in $(USER_ENV) (servers run under per-user system accounts)"
	@[ -x $(USER_ENV)/bin/python ] || (mkdir -p $(dir $(USER_ENV)) && $(USER_PYTHON) -m venv $(USER_ENV))
	@$(USER_ENV)/bin/python -m pip install -q --upgrade pip $(QUIET_PIP)
	@torch=$$($(USER_ENV)/bin/python $(TORCH_PIP)) && $(USER_ENV)/bin/python -m pip install -q '.[ml]' $$torch $(QUIET_PIP)
	@$(USER_ENV)/bin/python -m pip install -q --no-deps --force-reinstall . $(QUIET_PIP)
	@chmod -R a+rX $(USER_ENV)
endif
	@touch $@

setup: $(STAMPS)/venv $(STAMPS)/node $(STAMPS)/extension $(STAMPS)/user-env

run: setup
	@$(BIN)/stratolab-hub --config hub/jupyterhub_config.py

chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$(IS_ROOT)" = yes ]; then echo "==> Debian chromium (apt) for the browser tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); \
	  else echo "!! /usr/bin/chromium is missing and this is not root: browser tests will be skipped (apt-get install chromium)"; fi; \
	fi

# Lint and type checks: they need only the virtual environment, so `make test` fails on them before the
# longer set-up steps. Settings in pyproject.toml; mypy's cache (.mypy_cache/) makes a second run take a second.
check: $(STAMPS)/venv
	@echo "==> ruff and mypy"
	@$(BIN)/ruff check --no-fix .
	@$(BIN)/mypy

# The extension's own checks, after its `jlpm install` (make setup): jest for its pure modules, eslint
# and prettier (check only, nothing fixed). Quiet unless one fails.
ext-check: $(STAMPS)/extension
	@echo "==> JupyterLab extension: jest, eslint and prettier"
	@cd $(EXT_DIR) && for step in test lint; do \
	  out=$$(PATH=$(BIN):$$PATH jlpm $$step 2>&1) || { echo "$$out"; exit 1; }; done

# `make test`: the set-up steps and the checks run side by side where they do not depend on each other (the
# lint and type checks beside the extension's build, Chromium's apt install beside pip; -O keeps each step's
# output together). Then pytest in two worker processes, a test module to a worker (tests/conftest.py says why
# modules may run side by side), except the few in tests/serial_modules.txt, whose timings want the machine to
# themselves: they run after, in one process. PYTEST_ARGS adds arguments to both (a path, -x, -k); a part with
# nothing selected (pytest's status 5) is no failure unless both are. `make test PYTEST_XDIST=` runs the whole
# selection in one process, as `pytest --pdb` or `-s` need.
PYTEST_XDIST ?= -n 2 --dist loadfile
SETUP_JOBS ?= 4

test:
	@$(MAKE) --no-print-directory -j$(SETUP_JOBS) --output-sync=target check setup chromium ext-check
ifeq ($(strip $(PYTEST_XDIST)),)
	@$(BIN)/python -m pytest $(PYTEST_ARGS)
else
	@$(BIN)/python -m pytest $(PYTEST_XDIST) --serial-modules=skip $(PYTEST_ARGS); parallel=$$?; \
	echo "==> the modules in tests/serial_modules.txt, on their own"; \
	$(BIN)/python -m pytest --serial-modules=only $(PYTEST_ARGS); serial=$$?; \
	if [ $$parallel = 5 ] && [ $$serial = 5 ]; then exit 5; fi; \
	for status in $$parallel $$serial; do [ $$status = 0 ] || [ $$status = 5 ] || exit $$status; done
endif

bench: setup
	@torch=$$($(BIN)/python $(TORCH_PIP)) && $(BIN)/python -m pip install -q -e '.[hub,test,bench]' $$torch $(QUIET_PIP)
	@$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(STAMPS) stratolab/labextension stratolab/platform/_call_writer.*.so $(EXT_DIR)/lib $(EXT_DIR)/node_modules node_modules .mypy_cache .ruff_cache
