# Set-up and main commands. `make train` and `make test` each create .venv and install everything when needed.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
# e.g. a CUDA build: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train test test-all demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m src.train +experiment=pipeline $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
