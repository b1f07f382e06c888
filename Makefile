# refcocog-tools: `make book` builds the report on the embedded defaults, `make test` runs the tests.
# Both create .venv and install the pinned environment on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Everything the project downloads or generates stays inside the checkout.
export REFCOCOG_TOOLS_CACHE ?= $(CURDIR)/.cache/refcocog-tools
export YOLO_CONFIG_DIR ?= $(CURDIR)/.cache/ultralytics
export YOLO_OFFLINE := 1
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0
# Deterministic, comparable numbers on any machine: one thread for torch and BLAS.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

# `make reproduce` parameters (the real configuration).
DATA_ROOT ?=
CLIP ?= RN50x16
PROPOSALS ?= yolov8s
DEVICE ?= cuda
LIMIT ?= 0

.PHONY: all install test lint book reproduce regen-baselines clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests
	$(BIN)/python -m pytest -q -p no:cacheprovider --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks

book: $(STAMP)
	$(BIN)/python -m refcocog_tools.report build

reproduce: $(STAMP)
	@test -n "$(DATA_ROOT)" || { echo "usage: make reproduce DATA_ROOT=/data/refcocog [CLIP=RN50x16] [PROPOSALS=yolov8s] [DEVICE=cuda] [LIMIT=0]"; exit 2; }
	$(BIN)/python -m refcocog_tools.report build -p data_root "$(DATA_ROOT)" -p clip "$(CLIP)" -p proposals "$(PROPOSALS)" -p device "$(DEVICE)" -p limit "$(LIMIT)"

regen-baselines: $(STAMP)
	$(BIN)/python -m refcocog_tools.report regen-baselines

clean:
	rm -rf book/_build book/chapters .cache
