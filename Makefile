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
