# Two entry points (see README.md): `make demo` and `make test`. While developing:
# `make unit` (engine tests, no Snakemake runs) and `make lint`; CI (.ci/run) runs
# `make test`, which runs `make lint` first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= all

.PHONY: env data demo test unit lint format clean

$(BIN)/snakemake: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

env: $(BIN)/snakemake

data: env
	$(BIN)/python scripts/fetch_demo_data.py

demo: data
	$(BIN)/snakemake --profile profiles/workstation --cores $(CORES)
	@echo "Demo outputs in results/; the cohort page: results/cohort/report.html"

PY_DIRS    := workflow scripts tests benchmarks
SMK_FILES  := Snakefile workflow/rules

test: lint data
	$(BIN)/python -m pytest tests -m "not slow" -n auto --dist loadfile --durations=25

# Engine tests only: the end-to-end Snakemake runs are marked e2e.
unit: data
	$(BIN)/python -m pytest tests -m "not slow and not e2e" -q

# The same checks as tests/test_style.py.
lint: env
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/snakefmt --check $(SMK_FILES)
	$(BIN)/snakemake --lint --cores 1

format: env
	$(BIN)/ruff format $(PY_DIRS)
	$(BIN)/ruff check --fix $(PY_DIRS)
	$(BIN)/snakefmt $(SMK_FILES)

clean:
	rm -rf results logs .snakemake
