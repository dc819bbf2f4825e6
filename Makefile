# make setup   - create .venv from requirements.txt (idempotent: redone only when requirements change)
# make repro   - setup, then run the DVC pipeline (split -> train x4 -> select -> evaluate)
# make help    - this list (also what a bare `make` prints)
# make test    - setup, then the whole test suite on 3 parallel workers (what CI runs; TEST_WORKERS=0: serially)
# make test-fast - setup, then the unit tests only (-m "not slow": no dvc repro, no servers, no browser)
# make bench   - plain loop vs frozen-prefix reuse on the default config (prints a table + JSON)
# make bench-scale - dvc status, split and a train stage's start on 30,000 and 202,599-image mirrors
# make mlflow-ui - browse runs of the local SQLite store at http://127.0.0.1:5000
# make mlflow-server - a tracking server on 127.0.0.1:5000 over the same store, for parallel runs:
#                 export MLFLOW_TRACKING_URI=http://127.0.0.1:5000 (HOST=0.0.0.0 to serve a team)
#                 AUTH=1: logins required (MLflow's basic-auth app, mlflow-auth.ini; docs/team.md "Logins")
# make celeba-sample - the whole pipeline on ../shared/celeba-sample (real CelebA) as DVC experiment
#                  `celeba-sample`, in a temporary copy: params.yaml, dvc.lock, workspace untouched
# make push    - dvc push to the default DVC remote, after dvc repro + git commit (one-line errors)
# make pull    - dvc pull from it on another clone; checks the remote first, pulls nothing if it lacks data
# make clean   - remove the generated set, split, feature cache and models/ (not the MLflow store, not data.root)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements.installed
export PATH := $(abspath $(BIN)):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup repro test test-fast bench bench-scale mlflow-ui mlflow-server celeba-sample push pull clean

help:
	@awk '/^#/ {sub(/^# ?/, ""); print; next} {exit}' $(firstword $(MAKEFILE_LIST))

setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

repro: setup
	dvc repro

# pytest-xdist: each test module on one of TEST_WORKERS processes (a module's fixtures, such as
# the e2e module's `dvc repro`, are built once). TEST_WORKERS=0: one process, as plain pytest.
TEST_WORKERS ?= 3
PYTEST := python -m pytest -n $(TEST_WORKERS) --dist loadfile
test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

bench: setup
	python -m pipeline bench

bench-scale: setup
	python -m pipeline scale

mlflow-ui: setup
	@echo "the experiment's runs: http://127.0.0.1:5000$$(python -m pipeline store --what runs-page)"
	mlflow ui --backend-store-uri "$$(python -m pipeline store --what store)" --host 127.0.0.1 --port 5000

HOST ?= 127.0.0.1
PORT ?= 5000
AUTH ?=
mlflow-server: setup
	$(if $(AUTH),MLFLOW_AUTH_CONFIG_PATH="$(CURDIR)/mlflow-auth.ini") \
	mlflow server $(if $(AUTH),--app-name basic-auth) --backend-store-uri "$$(python -m pipeline store --what store)" \
		--artifacts-destination "$$(python -m pipeline store --what artifacts)" --host $(HOST) --port $(PORT)

# The real-data check. `dvc exp run --temp` runs the pipeline of this working tree (uncommitted
# changes included) in .dvc/tmp/exps/ with the -S overrides applied there, and keeps the result
# (params, dvc.lock, metrics, models) as the experiment `celeba-sample` (--force replaces the last
# one): `dvc exp show` compares it with the default run, `dvc exp apply celeba-sample` brings it
# into the workspace. The copy lives elsewhere, so data.root is made absolute and the runs go to
# this workspace's MLflow store (or $MLFLOW_TRACKING_URI) under their own experiment and registered
# model, leaving the default's `champion` alone. Split by identity: no person in two splits.
# 64x64 (data.image_size) as by default; 224 needs a GPU. More overrides, e.g.:
#   make celeba-sample CELEBA_SAMPLE_ARGS="-S train.epochs=1 -S data.limit=1000"
CELEBA_SAMPLE ?= ../shared/celeba-sample
CELEBA_SAMPLE_ARGS ?=
celeba-sample: setup
	@test -d "$(CELEBA_SAMPLE)" || { echo "error: $(CELEBA_SAMPLE): CelebA folder not found (make celeba-sample CELEBA_SAMPLE=/path/to/it)" >&2; exit 1; }
	uri="$$(python -m pipeline store)" && MLFLOW_TRACKING_URI="$$uri" \
	dvc exp run --temp --force --name celeba-sample \
	    -S data.source=celeba -S 'data.root=$(abspath $(CELEBA_SAMPLE))' -S split.group_by=identity \
	    -S base.mlflow.experiment=celeba-sample -S base.mlflow.registered_model=gender-vgg16-celeba-sample \
	    -S 'base.mlflow.artifact_root=$(CURDIR)/mlartifacts' $(CELEBA_SAMPLE_ARGS)
	dvc exp show --md --drop '.*' --keep 'Experiment|.*best_val_acc|accuracy|split.group_by|data.root'

# Sharing outputs through the DVC remote (docs/team.md). pipeline/tools/remote.py
# checks the remote first and turns DVC's multi-line failures into one line.
push: setup
	python -m pipeline remote push

pull: setup
	python -m pipeline remote pull

# Generated pipeline outputs only (paths from params.yaml and dvc.yaml's vars); the MLflow store
# (mlflow.db, mlartifacts/) keeps its history, and a CelebA folder under data/ (data.root) is never touched.
CLEAN_KEYS := data.synthetic.dir split.dir train.feature_cache train.models_dir
clean:
	$(BIN)/python -c "import sys; from pipeline.core.config import load_params; p = load_params(); \
	print('\n'.join(str(p.path(k)) for k in sys.argv[1:]))" $(CLEAN_KEYS) | xargs -d '\n' rm -rf
	rm -rf dvc_plots
