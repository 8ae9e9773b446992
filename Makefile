# The two commands a newcomer needs: `make serve` and `make test`.
# Each creates the virtualenv at .venv/ on first use and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test lint browser sample model wheel image clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Local development: API keys off, bound to 127.0.0.1 (see README, Security).
serve: $(STAMP)
	$(BIN)/risk-engine serve --no-auth

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict risk_engine

test: lint browser
	$(BIN)/pytest

# The browser tests drive Debian's chromium and chromium-driver: installed here when
# missing and run as root (as CI is); otherwise those tests skip (CI makes them required).
browser:
	@command -v chromedriver >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null; }
	@command -v chromedriver >/dev/null 2>&1 || \
	  echo "chromium-driver is not installed (not root?): the browser tests will skip"

# Regenerate the committed sample data and the default model (see README).
sample: $(STAMP)
	$(BIN)/risk-engine simulate --users 80 --days 28 --seed 7 --out data/samples/events.jsonl --labels data/samples/labels.jsonl --outcomes data/samples/outcomes.jsonl

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist

# Rebuild the bundled default model exactly as shipped (about two minutes); it is package
# data, so the wheel and the container image carry it.
model: $(STAMP)
	mkdir -p var/train
	$(BIN)/risk-engine simulate --users 3000 --days 30 --seed 1 --out var/train/events.jsonl --labels var/train/labels.jsonl
	$(BIN)/risk-engine train var/train/events.jsonl --labels var/train/labels.jsonl --seed 0 --out risk_engine/data/default.npz

# The wheel (dist/), as the wheel test builds it: dependencies come from the index at install.
wheel: $(STAMP)
	$(BIN)/python -m pip wheel --no-deps --quiet -w dist .

# The container image (Dockerfile), when a builder whose daemon answers is on the machine;
# CI runs this after the tests and skips it otherwise.
IMAGE ?= risk-engine:latest
image:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  docker build -t $(IMAGE) . && docker run --rm $(IMAGE) --version; \
	elif command -v podman >/dev/null 2>&1; then \
	  podman build -t $(IMAGE) . && podman run --rm $(IMAGE) --version; \
	else \
	  echo "no container builder (docker with a running daemon, or podman): image not built"; \
	fi
