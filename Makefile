# The two commands: `make run` and `make test`. Both create .venv and install
# the project on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# No phoning home from a laptop or CI.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false

.PHONY: install run test test-fast check docs repro plots bench soak suite serve monitor deploy worker stack stack-down stack-status clean

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(INSTALLED)

install: $(INSTALLED)

## run: the training flow on the configured data (bundled digits by default)
run: install
	$(BIN)/python -m flows.run

## test: the test suite, its files spread over the cores, the longest first (tests/conftest.py; TEST_WORKERS=1 for one process)
# One worker per core: a third worker on two cores measured 11 min 58 s and 12 min 07 s against 12 min 14 s,
# within the noise, and every e2e file ran 1.5x slower (the suite is CPU-bound, not waiting).
TEST_WORKERS ?= auto
TEST_ORDER := --dist loadfile --no-loadscope-reorder
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(TEST_ORDER)

## test-fast: the unit and data tests only (no e2e flow, no server, no `slow` training): the suite to run while editing
test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(TEST_ORDER) -m "not slow" tests/unit tests/data

## docs: the manual (docs/, mkdocs.yml) built offline into site/; --strict: a broken link, a page missing from nav or a bad snippet fails
docs: install
	$(BIN)/mkdocs build --strict

## check: formatting, lint and types (scripts/check: ruff format, ruff check, mypy); `scripts/check --fix` repairs
check: install
	scripts/check

## plots: `dvc plots show` as reports/dvc_plots/index.html, Vega inlined (no CDN); ARGS="diff HEAD" compares
plots: install
	$(BIN)/python -m flows.report --plots $(or $(ARGS),show)

## bench: every benchmark in bench/, results in reports/bench.json
bench: install
	for script in bench/bench_*.py; do $(BIN)/python -m bench.$$(basename $$script .py) || exit 1; done

## soak: ten minutes of mixed load at 80% of the server's peak, then overload (bench/soak.py; needs wrk)
soak: install
	$(BIN)/python -m bench.soak

## serve: the model server on 127.0.0.1:8000 (settings: DISTILLERY_SERVE_* variables; docs/serving.md)
serve: install
	$(BIN)/python -m deploy.server

## suite: profile the configured (trusted) data into an editable GX suite
suite: install
	$(BIN)/python -m tasks.bootstrap_suite

## repro: the same DAG through plain DVC (its stages run bin/python: the venv, whatever PATH says)
repro: install
	$(BIN)/dvc repro
	$(BIN)/python -m flows.report

## monitor: one monitoring pass over the prediction log (drift, operations, live quality -> MLflow)
monitor: install
	$(BIN)/python -m flows.monitor

## deploy: register the weekly retrain and hourly monitor deployments on the process work pool
## $(POOL) (a Prefect server first: `make stack`, or `$(BIN)/prefect server start`); `make worker` runs them
POOL ?= distillery
deploy: install
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(BIN)/python -m flows.deployments --pool $(POOL)

## worker: a Prefect process worker on $(POOL): runs the deployments' flow runs (scheduled, or triggered by the monitor)
worker: install
	PATH=$(CURDIR)/$(BIN):$$PATH PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(BIN)/prefect worker start --pool $(POOL) --type process

## stack: PostgreSQL, S3 (moto), MLflow and Prefect servers on 127.0.0.1, state in .stack/;
## writes .stack.env (`. ./.stack.env && make run` uses them) and the DVC remote `stack` (docs/scaling-out.md)
stack: install
	$(BIN)/python -m stack up

stack-down: install
	$(BIN)/python -m stack down

stack-status: install
	$(BIN)/python -m stack status

clean:
	rm -rf data/ingested data/validated data/quarantine data/processed models reports
