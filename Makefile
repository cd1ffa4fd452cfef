# Everything bootstraps .venv with python3 -m venv + pip; nothing else is needed on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench soak readme lint lock-check install-check meltano-example clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,lint]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest

# Regenerate README.md's settings table from `target-cbx1 --about --format markdown`.
readme: $(STAMP)
	$(BIN)/python scripts/readme_settings.py

# Throughput, CPU and memory against the local sandbox (a script that prints a table, not a test).
bench: $(STAMP)
	$(BIN)/python bench/run.py

# The chaos soak: the real target against the chaos sandbox, killed and resumed, checked against the
# sandbox's store (a script that prints a table; about 20 minutes on 2 cores). A shorter one:
# make soak SOAK_ARGS="--records 20000 --seeds 1".
SOAK_ARGS ?=
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check target_cbx1 tests examples bench scripts
	$(BIN)/ruff format --check target_cbx1 tests examples bench scripts
	$(BIN)/mypy

# poetry.lock must match pyproject.toml (uses the shared Poetry wrapper when present, else poetry on PATH).
lock-check:
	@if [ -x ../shared/tools/poetry ]; then ../shared/tools/poetry check --lock; else poetry check --lock; fi

# `pip install .` into a clean venv in a temporary directory, then target-cbx1 --about (text and
# JSON, which must list every setting) and cbx1-sandbox --help; the venv is deleted afterwards.
install-check: $(STAMP)
	$(BIN)/python scripts/install_check.py --python $(PYTHON)

# Meltano 4.4 in its own venv (MELTANO_VENV), then examples/accounts.jsonl -> tap-jsonl -> stream map
# -> target-cbx1 -> a local cbx1-sandbox, checked against what the sandbox stored (README: Meltano).
MELTANO_VENV ?= /tmp/meltano-venv

$(MELTANO_VENV)/.installed:
	$(PYTHON) -m venv $(MELTANO_VENV)
	$(MELTANO_VENV)/bin/python -m pip install --quiet 'meltano==4.4.*'
	touch $@

meltano-example: $(STAMP) $(MELTANO_VENV)/.installed
	$(BIN)/python scripts/meltano_example.py --meltano $(MELTANO_VENV)/bin/meltano

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
