# `make demo` and `make test` do all set-up on a fresh machine that has only Python:
# Debian's etcd-server, a venv, the package installed so that twistd finds the evc plugin.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps etcd browser emsp venv test demo bench clean

deps: etcd venv

etcd:
	@command -v etcd >/dev/null && command -v etcdctl >/dev/null || { \
	  echo "installing Debian's etcd-server and etcd-client"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq etcd-server etcd-client >/dev/null; }

# Debian's chromium + chromium-driver: the page's browser tests (tests/front/manual/test_page.py) and the demo's
# screenshot (docs/img/page.png).
browser:
	@command -v chromium >/dev/null && [ -x /usr/bin/chromedriver ] || { \
	  echo "installing Debian's chromium and chromium-driver"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

# extrawest-ocpi, an eMSP that is not EVC's code (tests/front/ocpi/test_extrawest.py), pins pydantic 1: a venv of its own.
EMSP_VENV ?= .emsp-venv
EMSP_PACKAGES := extrawest-ocpi==2025.7.16 uvicorn

emsp: $(EMSP_VENV)/.installed

$(EMSP_VENV)/.installed:
	$(PYTHON) -m venv $(EMSP_VENV)
	$(EMSP_VENV)/bin/python -m pip install -q $(EMSP_PACKAGES)
	echo "$(EMSP_PACKAGES)" > $@

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,ocpp]' --config-settings editable_mode=compat
	touch $@

test: deps browser emsp
	EVC_EMSP_VENV=$(abspath $(EMSP_VENV)) $(PY) -m pytest -q tests

demo: deps
	$(PY) -m evc.demo --screenshot docs/img/page.png

# The load generator and the bare central system are processes that benchmarks/ocpp_load.py starts itself.
BENCHES := $(filter-out benchmarks/ocpp_loadgen.py benchmarks/ocpp_bare_cs.py,$(wildcard benchmarks/*.py))

bench: deps
	cd benchmarks/ocpp_rpc && npm ci --no-audit --no-fund --loglevel=error
	@for b in $(BENCHES); do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(EMSP_VENV) build *.egg-info .demo
