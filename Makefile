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

.PHONY: all install test unit nbval nbval-generic-cpu embedded-models lint book book-check reproduce regen-baselines gpu-check clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

# ruff, and the layers contract of the sub-packages (pyproject.toml, [tool.importlinter]).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

# The regression checks: each chapter executed afresh and compared with notebooks/*.ipynb.
NBVAL := $(BIN)/python -m pytest -q -p no:cacheprovider --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks
# A second run on PyTorch's generic CPU kernels: they change the last digits of floats the way
# another CPU does, so the baselines are proven to hold beyond the machine that wrote them. It
# starts from an empty cache of its own: the embedded checkpoints are generated again there
# (bit-identical on any CPU, see untrained_models._PortableRandom) and every embedding and regressor is
# computed afresh, as on a fresh clone elsewhere.
GENERIC_CPU_CACHE := $(CURDIR)/.cache/refcocog-tools-generic-cpu
# Each run's chapters write their results files to a fresh folder of the run's own (chapter 10
# reads them): the two runs go in parallel, and a results/ left by `make book` must not leak in.
NBVAL_RESULTS := $(CURDIR)/.cache/nbval/results
GENERIC_CPU_RESULTS := $(CURDIR)/.cache/nbval-generic-cpu/results

# The unit tests and the two nbval runs share the two cores: three jobs at once keep both busy
# (the unit tests' long cases are single-threaded), about a minute sooner than one after another.
test: $(STAMP) lint embedded-models
	$(MAKE) --no-print-directory -j3 --output-sync=target unit nbval nbval-generic-cpu

unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

nbval: $(STAMP) embedded-models
	rm -rf $(NBVAL_RESULTS)
	REFCOCOG_TOOLS_RESULTS=$(NBVAL_RESULTS) $(NBVAL)

nbval-generic-cpu: $(STAMP)
	rm -rf $(GENERIC_CPU_CACHE)
	mkdir -p $(GENERIC_CPU_CACHE)
	rm -rf $(GENERIC_CPU_RESULTS)
	ATEN_CPU_CAPABILITY=default REFCOCOG_TOOLS_CACHE=$(GENERIC_CPU_CACHE) \
	    REFCOCOG_TOOLS_RESULTS=$(GENERIC_CPU_RESULTS) $(NBVAL)

# The embedded checkpoints (untrained tiny models generated, the shipped toy CLIP unpacked),
# written once into the cache before anything runs in parallel.
embedded-models: $(STAMP)
	$(BIN)/python -c "from refcocog_tools.models.clip_loading import load_clip; \
	from refcocog_tools.models.yolo_models import load_yolo; \
	[load_clip(name) for name in ('tiny-rn', 'tiny-vit', 'toy-rn')]; load_yolo('tiny-yolov8s')"

# `make book` re-executes only the chapters whose source, parameters or package changed;
# `make book CHAPTERS=09_red_circle` re-executes that chapter (and any other out of date), then
# builds the book; `make book FORCE=1` re-executes every chapter.
CHAPTERS ?=
FORCE ?=
book: $(STAMP)
	$(BIN)/python -m refcocog_tools.cli.book build $(if $(CHAPTERS),--chapters $(CHAPTERS)) $(if $(FORCE),--force)

# Every built page in headless Chromium at 1280x900 (refcocog_tools.report.book_check): overflowing
# tables and figures, images without alt text, plumbing code shown, console errors, requests
# off the machine, raw TeX, broken internal links. Needs Debian's chromium (apt-get install
# chromium); no browser is downloaded.
book-check: $(STAMP)
	$(BIN)/python -m refcocog_tools.cli.book_check book/_build/html

reproduce: $(STAMP)
	@test -n "$(DATA_ROOT)" || { echo "usage: make reproduce DATA_ROOT=/data/refcocog [CLIP=RN50x16] [PROPOSALS=yolov8s] [DEVICE=cuda] [LIMIT=0]"; exit 2; }
	$(BIN)/python -m refcocog_tools.cli.book build -p data_root "$(DATA_ROOT)" -p clip "$(CLIP)" -p proposals "$(PROPOSALS)" -p device "$(DEVICE)" -p limit "$(LIMIT)"

# The prepared GPU check (README, "Throughput"): needs only PyTorch and torchvision; wheels of
# openai-clip, ultralytics, ultralytics-thop, ftfy, wcwidth and setuptools<82 in ./wheels or on
# PYTHONPATH. GPU_CHECK_ARGS=--small runs it at CPU sizes.
GPU_CHECK_OUT ?= gpu_check.json
gpu-check:
	$(PYTHON) scripts/gpu_check.py --out "$(GPU_CHECK_OUT)" $(GPU_CHECK_ARGS)

regen-baselines: $(STAMP)
	$(BIN)/python -m refcocog_tools.cli.book regen-baselines

clean:
	rm -rf book/_build book/chapters .cache
