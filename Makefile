# The two commands of the README. Both create .venv from the committed lock when it is
# missing or older than the lock, then run.
PYTHON     ?= python3.10
VENV       := .venv
LOCK       := requirements/lock.txt
UV_VERSION := 0.13.9
DATA_DIR   ?= ../shared/data/ml-100k
OUTPUT_DIR ?= output
STAMP      := $(VENV)/.installed

.PHONY: run test lock clean

run: $(STAMP)
	@if [ -d "$(DATA_DIR)" ]; then \
	  $(VENV)/bin/movierec run --data-dir "$(DATA_DIR)" --output-dir "$(OUTPUT_DIR)"; \
	else \
	  $(VENV)/bin/movierec run --dataset ml-100k --output-dir "$(OUTPUT_DIR)"; \
	fi

test: $(STAMP)
	$(VENV)/bin/python -m pytest

$(STAMP): $(LOCK) pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync -q --python $(VENV)/bin/python $(LOCK)
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python --no-deps -e .
	@touch $@

# Re-resolve the lock from requirements/base.in (needs network to PyPI).
lock: $(STAMP)
	$(VENV)/bin/uv pip compile -q --python-version 3.10 --exclude-newer 2025-01-15 \
	  requirements/base.in -o $(LOCK)

clean:
	rm -rf $(VENV) $(OUTPUT_DIR)
