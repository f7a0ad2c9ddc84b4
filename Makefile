# Two entry points for a fresh machine with Python 3.11+, Node.js 20+ and make:
#   make up    start catalog, careplan and the EHR sandbox locally
#   make test  run the static checks (make lint), then the whole test suite
# Every install step lives here and is idempotent: a second run only checks stamps.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_TOOLS := tools/ehr-sandbox tools/fhir-validator
NODE_STAMPS := $(addsuffix /node_modules/.installed,$(NODE_TOOLS))

.PHONY: up test deps lint fuzz bench bench-full clean

deps: $(PY_STAMP) $(NODE_STAMPS)

$(PY_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

%/node_modules/.installed: %/package-lock.json %/package.json
	cd $* && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

up: deps
	$(BIN)/cicatrix up

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# ruff, mypy (strict, configured in pyproject.toml), the import contracts ([tool.importlinter]) and dead code
lint: deps
	$(BIN)/ruff check services tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/vulture services --min-confidence 80

fuzz: deps
	CICATRIX_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest tests -m fuzz

bench: deps
	$(BIN)/python -m tests.bench

bench-full: deps
	$(BIN)/python -m tests.bench --full

clean:
	rm -rf $(VENV) var $(addsuffix /node_modules,$(NODE_TOOLS))
