# One command each on a fresh machine: the first run creates .venv and installs tfvision into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo

.PHONY: demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tfvision data make-shapes --out $(DEMO_DIR)/shapes --train 2000 --val 200 --size 128 --seed 0 --overwrite
	$(VENV)/bin/tfvision data stats $(DEMO_DIR)/shapes
	$(VENV)/bin/tfvision data show $(DEMO_DIR)/shapes --split val --num 16 --out $(DEMO_DIR)/grid.png

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
