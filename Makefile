# Two commands do all set-up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck clean

setup: $(STAMP)

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The pipeline's stage commands call `clare`, so the venv goes first on PATH.
demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/clare show

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check pipeline stages cache tests benchmarks
	$(MAKE) typecheck

# mypy finds a package by folder name, and clare's folders are named otherwise (pipeline/ is
# clare, stages/ clare.stages, cache/ clare.cache): it checks a tree of links with clare's
# layout, rebuilt each run so that added and removed modules show. No install step here, so
# the pre-commit hook runs it offline.
TYPECHECK := build/typecheck
typecheck:
	rm -rf $(TYPECHECK)/clare
	mkdir -p $(TYPECHECK)
	cp -rs $(CURDIR)/pipeline $(TYPECHECK)/clare
	ln -s $(CURDIR)/stages $(TYPECHECK)/clare/stages
	ln -s $(CURDIR)/cache $(TYPECHECK)/clare/cache
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/.mypy_cache -p clare

clean:
	rm -rf data/demo models/tiny stores runs reports dvc.lock build
