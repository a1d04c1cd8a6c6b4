# jaxlm: `make train` trains the default model; `make test` runs the whole test suite.
# Each target sets up its own virtual environment (.venv) first, idempotently.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/base.py
ARGS ?=

.PHONY: setup setup-test train test bench clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PY) -m pip install --quiet -e '.[dev,seqio,gcs,hf-cpu,tpu,eval,rate,clean,sweep,beam]'
	$(PY) -m jaxlm.lm_eval_plugin install
	@# tests/test_rate.py drives Debian's Chromium through Playwright (a root machine installs it)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo 'note: chromium is not installed and cannot be (not root): the browser tests will skip'
	touch $@

setup: $(VENV)/.core
setup-test: $(VENV)/.test

## Train (or resume) the default run: CONFIG=configs/shakespeare_char.py ARGS='--config.train.steps=100'
train: $(VENV)/.core
	$(PY) -m jaxlm.train --config=$(CONFIG) $(ARGS)

## The whole test suite on CPU (8 simulated devices), TensorFlow/SeqIO extra included.
test: $(VENV)/.test
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder $(ARGS)

## Step time, tokens/s and MFU of the train step, eval forward and decoding.
bench: $(VENV)/.core
	$(PY) -m jaxlm.bench --config=$(CONFIG) $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
