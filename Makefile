# The two commands a newcomer needs: `make serve` and `make test`.
# Each creates the virtualenv at .venv/ on first use and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# The compiled decision core (risk_engine/compiled.py): its sources, and the manifest
# its build writes (the sources' SHA-256).
CORE_SOURCES := $(shell $(PYTHON) risk_engine/compiled.py sources)
CORE_BUILD := risk_engine/_compiled.json

.PHONY: serve test lint browser build sample model wheel image clean

# The dependencies and the package, as sources: the rule below compiles the core, once.
$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	RISK_ENGINE_PURE_PYTHON=1 $(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The compiled core (setup.py), built in place; built again whenever one of its sources
# changes, so an edit is never shadowed by an old build (tests/conftest.py also refuses
# a stale one).
$(CORE_BUILD): $(CORE_SOURCES) | $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps -e .

build: $(CORE_BUILD)

# Local development: API keys off, bound to 127.0.0.1 (see README, Security).
serve: $(CORE_BUILD)
	$(BIN)/risk-engine serve --no-auth

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict risk_engine

test: lint browser $(CORE_BUILD)
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
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist $(CORE_BUILD)
	find risk_engine -name '*.so' -delete

# Rebuild the bundled default model and policy exactly as shipped (about ten minutes);
# both are package data, so the wheel and the container image carry them. The model
# learns from four differently configured worlds at once, and the policy is calibrated
# on four more simulations (other seeds) of the same worlds, never on the training log:
# a bank's traffic is none of our worlds, so the shipped pair must not fit one of them.
# Its deny target is a tenth of the default: a deny spent at 0.1% of our worlds' users
# denied whole sessions of offices and VPN users in worlds it never saw, where a
# step-up they could pass would have done.
WORLDS := default retail corporate mobile-heavy
model: $(STAMP)
	mkdir -p var/train
	n=0; for w in $(WORLDS); do n=$$((n + 1)); \
	  $(BIN)/risk-engine simulate --world $$w --users 800 --days 30 --seed $$n --id-prefix $$w- \
	    --out var/train/$$w.jsonl --labels var/train/$$w.labels.jsonl || exit 1; \
	  $(BIN)/risk-engine simulate --world $$w --users 500 --days 30 --seed $$((n + 10)) --id-prefix $$w- \
	    --out var/train/cal-$$w.jsonl --labels var/train/cal-$$w.labels.jsonl \
	    --outcomes var/train/cal-$$w.outcomes.jsonl || exit 1; \
	done
	$(BIN)/risk-engine train $(WORLDS:%=var/train/%.jsonl) $(WORLDS:%=--labels var/train/%.labels.jsonl) \
	  --seed 0 --out risk_engine/data/default.npz
	cat $(WORLDS:%=var/train/cal-%.jsonl) > var/train/cal.jsonl
	cat $(WORLDS:%=var/train/cal-%.labels.jsonl) > var/train/cal.labels.jsonl
	cat $(WORLDS:%=var/train/cal-%.outcomes.jsonl) > var/train/cal.outcomes.jsonl
	$(BIN)/risk-engine calibrate var/train/cal.jsonl --labels var/train/cal.labels.jsonl \
	  --outcomes var/train/cal.outcomes.jsonl --target-deny 0.0001 --out risk_engine/data/policy.toml

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
