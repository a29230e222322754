# The two commands that do everything on a fresh machine:
#   make run    set up .venv and compare five methods on embedded data (MNIST-5k), 3 seeds
#   make test   set up .venv (and Fashion-MNIST when root) and run lint + the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data run test lint format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch 2.13.0 is the CPU wheel here; a bare `torch` would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Debian packages the tests use: Fashion-MNIST, and Chromium to render the HTML report.
data:
	@missing=""; \
	[ -d $(FMNIST) ] || missing="$$missing dataset-fashion-mnist"; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing Debian packages:$$missing (sudo apt-get install$$missing; or set RETAIN_FASHION_MNIST)"; \
	  fi; \
	fi

# The main job: finetune, two classic baselines (EWC, replay) and two of the papers' methods
# (WSN, SPG) on split MNIST-5k, 3 seeds; about a minute on one core. Run it again: finished
# trials are skipped. Table on stdout, report in runs/quickstart/report/.
QUICK_NOTE := Reduced setting for a quick look: 3 epochs per task on 800 training images per task, \
  MLP 400-400, 3 seeds, default method settings (WSN with Adam 1e-3 as in its paper), every method \
  that takes loss_heads trained on all classes seen (compare's --protocol seen). The papers train \
  longer on full datasets; docs/RESULTS.md has the measured tables.
run: setup
	$(VENV)/bin/retain compare --benchmark split-mnist5k --methods finetune,ewc,er,wsn,spg \
	  --seeds 3 --epochs 3 --set batch_size=32 --set lr=0.05 \
	  --set wsn:optimizer=adam --set wsn:lr=0.001 \
	  --out runs/quickstart --note "$(QUICK_NOTE)"

test: setup data
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: setup
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
