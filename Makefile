# Two commands do all set-up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck clean ablation

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

# The demo's ablation grid as queued DVC experiments, then one `clare compare` table of them
# (reports/ablation/compare.{md,csv,tex,html}). Half an hour on a busy 2-core CPU; not part
# of `make test`. Queued experiments run in temporary copies, which get the demo data and models
# with -C (they are not DVC outputs). Each experiment's report is restored with
# `dvc exp apply` and copied to reports/ablation/<experiment>; the workspace is put back as
# it was at the end.
ABLATION := fusion-v1-coop:fusion:coop:v1 fusion-v2-coop:fusion:coop:v2 \
	lare-coop:lare:coop:v2 clipping-coop:clipping:coop:v2 \
	fusion-v1-cocoop:fusion:cocoop:v1 fusion-v2-cocoop:fusion:cocoop:v2 \
	lare-cocoop:lare:cocoop:v2 clipping-cocoop:clipping:cocoop:v2
ABLATION_NAMES := $(foreach spec,$(ABLATION),$(firstword $(subst :, ,$(spec))))
SAVED := .dvc/tmp/ablation-saved

ablation: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	-$(BIN)/dvc exp remove $(ABLATION_NAMES) 2>/dev/null
	set -e; for spec in $(ABLATION); do set -- $$(echo $$spec | tr ':' ' '); \
	  $(BIN)/dvc exp run --queue -n $$1 -C data/demo -C models/tiny \
	    -S fit.module=$$2 -S fit.strategy=$$3 -S fit.attention=$$4; done
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp run --run-all --jobs 1
	mkdir -p $(SAVED) reports/ablation && cp params.yaml dvc.lock $(SAVED)/
	set -e; for name in $(ABLATION_NAMES); do $(BIN)/dvc exp apply $$name; \
	  rm -rf reports/ablation/$$name; cp -r reports/demo reports/ablation/$$name; done
	cp $(SAVED)/params.yaml $(SAVED)/dvc.lock . && $(BIN)/dvc checkout -q
	$(BIN)/dvc exp show --no-pager --only-changed \
	  --drop 'Created|State|Executor|.*/|subset_auc|robust_auc|ap$$|eer$$|val_loss|video_auc'
	$(BIN)/clare compare $(addprefix reports/ablation/,$(ABLATION_NAMES)) --out reports/ablation

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check pipeline stages cache tests benchmarks examples
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
