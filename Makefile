# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest workers: one per core (2 on the CI machine)
WORKERS ?= auto

.PHONY: venv demo test clean

venv: $(VENV)/.installed

# torch first and pinned: an unpinned install would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $@

demo: venv
	$(BIN)/defectkit demo

test: venv
	$(BIN)/python -m pytest -n $(WORKERS) --dist worksteal -q

clean:
	rm -rf $(VENV) .pytest_cache
