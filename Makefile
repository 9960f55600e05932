# Two entry points (see README.md): `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= all

.PHONY: env data demo test lint format clean

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
	@echo "Demo outputs in results/ (QC overlay: results/CMU-1-Small-Region/mask/overlay.png)"

test: data
	$(BIN)/python -m pytest tests -m "not slow"

lint: env
	$(BIN)/ruff check workflow scripts tests benchmarks
	$(BIN)/ruff format --check workflow scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --cores 1

format: env
	$(BIN)/ruff format workflow scripts tests benchmarks
	$(BIN)/ruff check --fix workflow scripts tests benchmarks
	$(BIN)/snakefmt Snakefile workflow/rules

clean:
	rm -rf results logs .snakemake
