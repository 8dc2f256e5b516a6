# Two commands set up and run everything on a fresh machine:
#   make demo   - create .venv, install, fine-tune on a real offline data set, reload through pipeline()
#   make test   - create .venv, install, run the test suite (CPU, offline)
# and for the edit loop: make test-fast - the suite without the tests marked slow (trainings, launches, benchmarks)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m vit_hf.demo

# One pytest-xdist worker per core; tests that share a module/session fixture stay on one worker (tests/conftest.py).
test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -n auto --dist loadgroup --durations=15

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -n auto --dist loadgroup -m "not slow"

bench: $(STAMP)
	$(PY) -m bench all

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
