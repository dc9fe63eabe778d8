# Set-up and main commands. `make train` and `make test` each create .venv and install everything when needed.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
# e.g. a CUDA build: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train test test-fast demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# the stamp records the torch build installed: asking for another one (TORCH=...) reinstalls
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e ".[dev,hf]"
	echo '$(TORCH)' > $(STAMP)

ifneq ($(wildcard $(STAMP)),)
ifneq ($(strip $(shell cat $(STAMP))),$(strip $(TORCH)))
.PHONY: $(STAMP)
endif
endif

install: $(STAMP)

train: $(STAMP)
	$(PY) -m src.train +experiment=pipeline $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# while iterating: the unit tests, without the ones marked slow (training, processes, compiled kernels); `make test`
# (CI) runs them all
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

demo: $(STAMP)
	$(PY) -m src.demo $(ARGS)

bench: $(STAMP)
	$(PY) -m src.bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
