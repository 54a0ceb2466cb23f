# Two commands on a fresh machine:  `make run` (the main job)  and  `make test` (the test suite).
# Each creates .venv, installs studyrunner into it and unpacks the CIFAR-10 image folders once.

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
ARCHIVE  ?= ../shared/data/cifar10-jpg.tar.gz
DATA     ?= .data
export STUDYRUNNER_DATA_DIR  ?= $(abspath $(DATA))/cifar10-jpg
export STUDYRUNNER_CACHE_DIR ?= $(abspath $(DATA))/cache

.PHONY: install data run train test test-all lint bench clean gpu-wheels gpu-install gpu-check

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

data: $(DATA)/cifar10-jpg/.unpacked
$(DATA)/cifar10-jpg/.unpacked:
	@test -f $(ARCHIVE) || { echo "CIFAR-10 archive not found at $(ARCHIVE); set ARCHIVE=path/to/cifar10-jpg.tar.gz"; exit 1; }
	mkdir -p $(DATA)
	tar xzf $(ARCHIVE) -C $(DATA)
	touch $@

# The main job: document 004's first question (optimizer x learning rate) as an Optuna study,
# CPU-sized; trials land in runs/optuna.db and runs/mlflow.db (see them with `studyrunner ui`).
run: install data
	$(BIN)/studyrunner run sweeps/cifar_lr.yaml --n-trials 12 --set data.train_subset=3000 --set data.val_subset=1000 \
	    --set epochs=8

# One configuration: document 004's BatchNorm step on 10,000 CIFAR-10 images, 10 epochs.
train: install data
	$(BIN)/studyrunner train --set data.train_subset=10000 --set epochs=10 --set model.batchnorm=true \
	    --set optim.name=adam --set optim.lr=0.0005 --json runs/train.json

# `make test`: everything but the runs marked `long` (a few minutes on 2 cores);
# `make test-all`: all of it, the long real-data, multi-process and browser checks too (what CI runs).
test: install data
	$(BIN)/python -m pytest -q -m "not long"

test-all: install data
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check studyrunner tests
	$(BIN)/mypy studyrunner

bench: install data
	$(BIN)/studyrunner bench throughput

# The GPU check (scripts/gpu_check.py, one line per figure, under 6 minutes): `make gpu-wheels` where the
# package registry is reachable (the wheels of studyrunner's runtime dependencies, pinned to this .venv's
# versions, into $(WHEELS)); copy the tree with $(WHEELS) and the data to the CUDA machine; there
# `make gpu-check` installs offline from $(WHEELS) (unless .venv is installed already) and runs it.
# Another Python or platform: WHEEL_FLAGS="--python-version 3.12 --platform manylinux_2_28_x86_64 --only-binary=:all:".
WHEELS      ?= $(DATA)/wheels
WHEEL_FLAGS ?=
gpu-wheels: install
	mkdir -p $(WHEELS)
	$(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
	    > $(WHEELS)/requirements.txt
	$(BIN)/pip freeze --exclude-editable > $(WHEELS)/constraints.txt
	$(BIN)/pip download --quiet -d $(WHEELS) $(WHEEL_FLAGS) -r $(WHEELS)/requirements.txt -c $(WHEELS)/constraints.txt "setuptools>=64"
	@echo "wheels in $(WHEELS) ($$(du -sh $(WHEELS) | cut -f1)); on the GPU machine: make gpu-check"

gpu-install:
	@test -f $(WHEELS)/requirements.txt || { echo "no wheels in $(WHEELS): run \`make gpu-wheels\` where the registry is reachable"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-index --find-links $(WHEELS) -e .
	touch $(VENV)/.offline

gpu-check: data
	@test -f $(VENV)/.installed || test -f $(VENV)/.offline || $(MAKE) --no-print-directory gpu-install
	$(BIN)/python scripts/gpu_check.py $(GPU_CHECK_FLAGS)

clean:
	rm -rf $(VENV) $(DATA) runs
