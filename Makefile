# The README's two commands: `make bench` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: test bench install clean

$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject: pip takes them from the
	# wheels on disk here; see README "Installation" for GPU machines.
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(VPY) -m pytest -q -p no:cacheprovider tests

bench: $(VENV)/.installed
	$(VENV)/bin/alignzoo bench quick
	$(VENV)/bin/alignzoo report runs/quick
	@echo "report: runs/quick/report.md"

clean:
	rm -rf $(VENV) runs
