# Fresh-machine entry points: `make test` (set up + run the tests), `make demo` (set up + segment sample data).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch on this kind of machine; the code itself works with any torch >= 2.3.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Sample data: the ISBI 2012 files beside this checkout serve as an offline cache when present.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/isbi2012),)
export NAPARI_UNET_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: setup system-deps test demo lint bench clean

$(BIN)/napari-unet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[napari,distributed,testing,export]" "napari[pyqt5]"
	touch $@

setup: $(BIN)/napari-unet

system-deps:
	bash scripts/install-system-deps.sh

test: system-deps setup
	$(BIN)/ruff check src tests benchmarks scripts
	bash scripts/with-display.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/napari-unet demo -o demo-output

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/lint-imports --no-logo
	$(BIN)/ruff format --check src tests benchmarks scripts

bench: setup
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/bench_predict.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
