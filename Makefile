# The two commands a newcomer needs: `make demo` and `make test`.
# Both bootstrap .venv themselves; the install is redone only when setup.cfg
# or pyproject.toml change (the stamp file depends on them).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
TOOLS  := curl openssl haproxy chromium certutil initdb pg_ctl systemd-analyze systemd-sysusers
PKI_OUT := pki/out

.PHONY: demo test lint check-demo lb-demo bench venv tools clean

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,demo]'
	@touch $@

venv: $(STAMP)

tools:
	@tools/ensure-tools $(TOOLS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) tools lint
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python demo.py --pki $(PKI_OUT)

check-demo: $(STAMP)
	$(BIN)/python demo.py --pki $(PKI_OUT) --check

lb-demo: $(STAMP)
	@tools/ensure-tools haproxy
	$(BIN)/python -m deploy.lb_demo --pki $(PKI_OUT)

# The bench extra (matplotlib) has its own stamp so `make test` never pulls it.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,demo,bench]'
	@touch $@

# Side-by-side server CPU per operation (issue 13): ours, stock gunicorn,
# plain HTTP and nginx; writes bench/RESULTS.md, bench/results.png and
# bench/results.jsonl; then certificate rotation under load (bench/rotation.py,
# bench/ROTATION.md). BENCH_ARGS=--quick: a 30 s smoke run into var/bench-quick/.
bench: $(BENCH_STAMP)
	@tools/ensure-tools openssl taskset nginx
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.rotation $(if $(findstring --quick,$(BENCH_ARGS)),--seconds 4 --out var/bench-quick)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
