# Every target creates .venv if it is missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: test demo bench docs screenshots clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: a looser requirement would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) $(CHROMIUM)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) -m benchmarks

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

# the hub's pages as docs/hub.md shows them, taken by tests/test_hub_pages.py in chromium
screenshots: $(STAMP) $(CHROMIUM)
	ADAPTERHUB_SCREENSHOTS=docs/img $(PY) -m pytest -q tests/test_hub_pages.py

clean:
	rm -rf $(VENV) site build *.egg-info

# the HTML view test renders the hub's pages in Debian's chromium (a missing one fails it)
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "chromium is missing and cannot be installed here (needs root and apt-get);" \
		     "tests/test_hub_view.py will fail" >&2; \
	fi
