# The two commands: `make book` renders the book, `make test` runs every test. Each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MATHJAX_VERSION := 3.2.2
MATHJAX := _build/mathjax/node_modules/mathjax/es5

.PHONY: all install export book serve test test-repo test-notebooks test-pytest bench clean

all: book

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev,fast]" > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	$(BIN)/python -c "import minima, nbdev, jupyter_book, torch, playwright"
	touch $(STAMP)

install: $(STAMP)

# MathJax for offline math, from the npm registry at build time (never committed).
$(MATHJAX)/tex-chtml.js:
	mkdir -p _build/mathjax
	npm install --no-audit --no-fund --silent --prefix _build/mathjax mathjax@$(MATHJAX_VERSION)

# nbdev-export, able to export one notebook into several modules (see the script).
export: install
	$(BIN)/python tools/export.py
	$(BIN)/nbdev-clean

book: install $(MATHJAX)/tex-chtml.js
	$(BIN)/python tools/export.py
	$(BIN)/python tools/stage_book.py nbs _build/src $(MATHJAX)
	$(BIN)/jupyter-book build _build/src --path-output . --keep-going
	$(BIN)/python tools/check_book.py _build/html
	@echo "The book: $(abspath _build/html/index.html)"

# The built book on http://localhost:8000 (search shows snippets only when served, not from file://).
PORT ?= 8000
serve:
	@test -f _build/html/index.html || { echo "no book yet: run make book first"; exit 1; }
	@echo "The book: http://localhost:$(PORT)/index.html (Ctrl-C stops)"
	python3 -m http.server --bind 127.0.0.1 --directory _build/html $(PORT)

# Checks of the repository itself, before anything regenerates minima/.
test-repo: install
	$(BIN)/pytest -q tests/test_repo.py

test-notebooks: install
	$(BIN)/nbdev-test --n-workers 2

test-pytest: install
	$(BIN)/pytest tests

test: test-repo test-notebooks book test-pytest


# Speed against PyTorch's CPU optimizers, measured in one run (not a test).
bench: install
	$(BIN)/python bench/bench_optim.py

clean:
	rm -rf _build
