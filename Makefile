# Set-up and main jobs. Every target creates and uses the virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { \
		echo "installing python3-venv (Debian ships Python without it)"; \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,export,dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check sdk trainer export tests benchmarks examples
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) examples/foundation_demo.py --workdir demo

bench: $(STAMP)
	$(PY) benchmarks/patch_select.py
	$(PY) benchmarks/scan_throughput.py

clean:
	rm -rf $(VENV) demo build *.egg-info
