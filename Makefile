# One command each on a fresh machine: the first run creates .venv and installs tfvision into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo
# The benchmarks' reference: torchvision, measured in the same run, from its own environment (never a
# dependency of tfvision). These releases are the CPU-runnable pair the machine's package index serves.
TORCH_VENV := .bench-venv-torch
TORCH_STAMP := $(TORCH_VENV)/.installed-stamp
TORCH_PINS := torch==2.14.1 torchvision==0.29.1 numpy
# TensorFlow's C++ start-up notices (CUDA probing, oneDNN) are noise in the demo's output.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The demo: make the shapes data, train the U-Net of configs/shapes/unet.yaml on it, print its val mIoU,
# export it for TF Serving and draw its predictions for a few val images. Everything lands in $(DEMO_DIR)/.
DEMO_SETS := --set data.root=$(DEMO_DIR)/shapes --set train.model_dir=$(DEMO_DIR)/runs/shapes_unet \
	--set export.root=$(DEMO_DIR)/saved_models
DEMO_VAL := $(addprefix $(DEMO_DIR)/shapes/images/val/,000000.png 000001.png 000002.png 000003.png)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)/runs $(DEMO_DIR)/saved_models $(DEMO_DIR)/predictions
	$(VENV)/bin/tfvision data make-shapes --out $(DEMO_DIR)/shapes --train 2000 --val 200 --size 128 --seed 0 --overwrite
	$(VENV)/bin/tfvision data stats $(DEMO_DIR)/shapes
	$(VENV)/bin/tfvision data show $(DEMO_DIR)/shapes --split val --num 16 --out $(DEMO_DIR)/grid.png
	$(VENV)/bin/tfvision train --config configs/shapes/unet.yaml $(DEMO_SETS)
	$(VENV)/bin/tfvision evaluate --config configs/shapes/unet.yaml $(DEMO_SETS)
	$(VENV)/bin/tfvision export --config configs/shapes/unet.yaml $(DEMO_SETS) --version 1
	$(VENV)/bin/tfvision predict --model $(DEMO_DIR)/saved_models/shapes_unet/1 $(DEMO_VAL) --out $(DEMO_DIR)/predictions

# Two worker processes (pytest-xdist): most tests are single-threaded Python and graph tracing, so two
# workers on two cores halve the wall time (20 min -> 9.5 min on a 2-core Xeon with AVX-512; 15-18 min on a
# 2-core AVX2-only EPYC). More cores give at most 4 workers; tests/conftest.py gives each one op thread per core.
# --maxschedchunk 2: tests are handed out two at a time as workers free up, so the long training tests, which
# tests/conftest.py puts first, spread over both workers and the short ones fill in at the end (by default the
# first worker is handed a quarter of the suite at once, all of the long tests among it).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --maxschedchunk 2 tests

$(TORCH_STAMP):
	test -x $(TORCH_VENV)/bin/python || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --quiet $(TORCH_PINS)
	touch $(TORCH_STAMP)

bench: $(STAMP) $(TORCH_STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) $(TORCH_VENV) $(DEMO_DIR) .pytest_cache
