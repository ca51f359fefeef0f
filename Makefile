# The README's two commands: `make run` and `make test`. Both create .venv on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test bench-smoke lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,tfds]'
	touch $(STAMP)

venv: $(STAMP)

# The main job: FedOBP vs FedAvg vs Local-Only on the embedded digits dataset.
# A demo that is recomputed from scratch on every call: --overwrite replaces the
# previous `make run` results in runs/digits-compare (runs elsewhere are refused).
run: $(STAMP)
	$(BIN)/fedjax-pfl compare --algorithms fedobp,fedavg,local --dataset digits --clients 20 \
	  --alpha 0.1 --participation 0.25 --rounds 60 --eval-every 10 --workdir runs/digits-compare \
	  --overwrite

# Two pytest-xdist workers (the suite is compile-bound; CI has 2 cores) sharing
# one XLA compilation cache for the run.
TEST_WORKERS ?= 2
test: $(STAMP)
	@cache=$$(mktemp -d); FEDJAX_PFL_TEST_CACHE=$$cache $(BIN)/python -m pytest -q \
	  -n $(TEST_WORKERS) tests; rc=$$?; rm -rf $$cache; exit $$rc

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --smoke

lint: $(STAMP)
	$(BIN)/ruff check fedjax_pfl tests benchmarks experiments

clean:
	rm -rf $(VENV) runs
