# spmgmt developer entry points.  Quickstart: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test

.PHONY: run start stop test venv pki clean

# The package is installed in editable "compat" mode: the default editable
# install hides twisted/plugins/ from twistd.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]' --config-settings editable_mode=compat
	$(PY) -c 'from twisted.plugin import IPlugin, getPlugins; import twisted.plugins; list(getPlugins(IPlugin, twisted.plugins))'
	touch $@

venv: $(STAMP)

# Run the local array in the foreground (Ctrl-C stops every process).
run: $(STAMP)
	$(PY) -m spmgmt.launcher run --config etc/spmgmt.toml

# The same, in the background; `make stop` ends it.
start: $(STAMP)
	$(PY) -m spmgmt.launcher start --config etc/spmgmt.toml

stop: $(STAMP)
	$(PY) -m spmgmt.launcher stop --config etc/spmgmt.toml

pki: $(STAMP)
	$(PY) -m spmgmt.pki --out var/pki spa spb a1 proxy

# The whole suite, with trial and with pytest (pytest-twisted).
test: $(STAMP)
	$(VENV)/bin/trial --jobs 2 tests
	$(VENV)/bin/pytest -q -p twisted tests

clean:
	rm -rf $(VENV) _trial_temp* .pytest_cache .hypothesis

# Benchmarks (bench/README.md): the Debian packages they need
# (scripts/bench-packages.txt: haproxy, wrk), then each bench once, printing
# Markdown; `make bench BENCH_FLAGS=--record` rewrites bench/RESULTS.md.
.PHONY: bench bench-packages
BENCH_FLAGS ?=

bench-packages: $(STAMP)
	$(PY) -c 'import sys; sys.path.insert(0, "bench"); import _common; _common.ensureDebianPackages()'

bench: $(STAMP) bench-packages
	$(PY) bench/peer_bench.py $(BENCH_FLAGS)
	$(PY) bench/failover_bench.py $(BENCH_FLAGS)
	$(PY) bench/proxy_gap_bench.py $(BENCH_FLAGS)
	$(PY) bench/proxy_throughput_bench.py $(BENCH_FLAGS)
	$(PY) bench/proxy_idle_bench.py $(BENCH_FLAGS)
