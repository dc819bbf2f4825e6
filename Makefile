# make setup   - create .venv from requirements.txt (idempotent: redone only when requirements change)
# make repro   - setup, then run the DVC pipeline (split -> train x4 -> select -> evaluate)
# make test    - setup, then the whole test suite
# make bench   - plain loop vs frozen-prefix reuse on the default config (prints a table + JSON)
# make mlflow-ui - browse runs of the local SQLite store at http://127.0.0.1:5000
# make clean   - remove generated data/ (split, feature cache) and models/ (not the MLflow store)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test bench mlflow-ui clean

setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

repro: setup
	dvc repro

test: setup
	python -m pytest

bench: setup
	python -m pipeline.bench

mlflow-ui: setup
	mlflow ui --backend-store-uri "$$(python -m pipeline.tracking)" --host 127.0.0.1 --port 5000

# Generated pipeline outputs only; the MLflow store (mlflow.db, mlartifacts/) keeps its history.
clean:
	rm -rf data models dvc_plots
