# Two entry points for a fresh clone: `make demo` (install + run the main job) and `make test` (install + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned, so nothing resolves a CUDA build of it
	$(BIN)/pip install --quiet torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install --quiet -e ".[cpu,test]"
	touch $(STAMP)

install: $(STAMP)

ENGINE := HF_HUB_OFFLINE=1 $(BIN)/engine
DEMO_INDEX ?= runs/demo-index
DEMO_QUERY ?= airport with runways

# The main job on the embedded default: check the data, index it with the shipped model, search it, score it.
# Data = ../shared/data/ucm_captions when it sits beside the checkout, else the 210-image sample in the package.
demo: $(STAMP)
	$(ENGINE) data check
	data=$$($(BIN)/python -c 'from engine.data import default_dataset_path as d; print(d())') && \
	$(ENGINE) index "$$data" --out $(DEMO_INDEX) && \
	$(ENGINE) query "$(DEMO_QUERY)" --index $(DEMO_INDEX) -k 5 && \
	$(ENGINE) eval "$$data" --split test

# The layer contract of pyproject.toml's [tool.importlinter] (docs/ARCHITECTURE.md): imports only point down.
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .import_linter_cache
