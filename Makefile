# `make demo`: install if needed, then run the main job end to end on the generated demo data.
# `make test`: install if needed, then run the test suite.
# The environment lives in .venv (override: make VENV=path ...); tools/install_env.sh
# returns at once when it is up to date.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test clean

install:
	@VENV=$(abspath $(VENV)) bash tools/install_env.sh

demo: install
	$(PY) tools/demo.py

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf output
