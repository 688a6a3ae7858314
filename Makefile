# Every target sets itself up from a fresh clone: .venv is created and filled on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(abspath ../shared/data)
export DAE_DATA_DIR ?= $(if $(wildcard $(DATA_DIR)/mnist),$(DATA_DIR),)

.PHONY: demo test bench lint study clean

# PyPI's torch for Linux is the CUDA build, which pulls several GB of CUDA packages; the quick start runs on the
# CPU, so the CPU build comes from PyTorch's own index, asked only when pip's own sources lack it (pip retries an
# index it cannot reach for every package, a minute and more offline). With a GPU, in a fresh clone or after
# `make clean`: make demo TORCH=torch==2.13.0 TORCH_INDEX=
TORCH ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt $(TORCH) 2>/dev/null \
	  || $(PY) -m pip install -q -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) $(TORCH)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# The tests run the real BM3D baseline. It is an optional extra under a non-commercial licence, so only `make
# test` installs it; `make demo` and a plain `pip install dae` do not.
$(VENV)/.installed-bm3d: $(VENV)/.installed
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bm3d]'
	touch $@

demo: $(VENV)/.installed
	rm -rf runs/demo
	$(VENV)/bin/dae train --time-budget 2m --out runs/demo
	$(VENV)/bin/dae eval --checkpoint runs/demo/checkpoints/best.safetensors --baselines median,tv,wavelet --limit 1000 --out runs/demo/eval
	$(VENV)/bin/dae report runs/demo

test: $(VENV)/.installed-bm3d
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) bench/run.py --out bench/results

study: $(VENV)/.installed
	$(VENV)/bin/dae study --out runs/study

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

clean:
	rm -rf $(VENV) runs build dist *.egg-info src/*.egg-info
