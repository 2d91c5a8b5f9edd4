# The README's two commands: `make bench` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: test test-fast lint bench install clean

$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject: pip takes them from the
	# wheels on disk here; see README "Installation" for GPU machines.
	# --no-compile: byte-compiling every installed module (torch, ray, transformers) cost more of
	# `make test`'s 15 minutes than compiling, on first import, the few the tests use.
	$(VPY) -m pip install -q --no-compile -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Two pytest workers with one thread each: tiny models run no faster on two threads, and two
# processes with two threads each on two cores slow PyTorch down many times (oversubscription).
test: lint
	OMP_NUM_THREADS=1 $(VPY) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=25 tests

# The edit loop: everything but the tests marked slow (training, suites), in under 2 minutes.
test-fast: lint
	OMP_NUM_THREADS=1 $(VPY) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup -m "not slow" --durations=10 tests

# ruff's lint rules and formatting (pyproject.toml [tool.ruff]); `ruff format .` fixes the latter.
lint: $(VENV)/.installed
	$(VPY) -m ruff check alignzoo tests
	$(VPY) -m ruff format --check alignzoo tests

# Two one-thread worker processes (one per core): the same numbers as a one-thread sequential run
# (the committed docs/quick report's), on both cores (speed-up: docs/cluster.md).
bench: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(VENV)/bin/alignzoo bench quick --workers 2
	OMP_NUM_THREADS=1 $(VENV)/bin/alignzoo report runs/quick
	@echo "report: runs/quick/report.md"

clean:
	rm -rf $(VENV) runs
