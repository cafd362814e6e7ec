# The two commands of the README: `make run` and `make test`. Each creates or refreshes .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test setup lock check bench clean

# requirements.lock pins every package to the version the tests last passed with (pip's constraints: -c);
# pyproject.toml says what the code needs, the lock what was tested. `make lock` makes it again.
$(STAMP): pyproject.toml requirements.lock
	@if test -x $(BIN)/python; then echo "Updating the dependencies in $(VENV) (pyproject.toml or requirements.lock changed)…"; \
	else echo "Installing dependencies into $(VENV) (the first run takes about a minute)…"; $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)
	@echo "Dependencies installed in $(VENV)."

setup: $(STAMP)

## Resolve pyproject.toml's dependencies afresh (newest allowed) into requirements.lock; then run `make test`.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	{ echo '# The versions `make test` passed with; made by `make lock` (pip freeze of a fresh install).'; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable; } > requirements.lock
	rm -rf .venv-lock

## Set up and run the bot: web chat on http://127.0.0.1:8000/, local desk on /desk, SQLite in ./var.
# On a database without a registry it first loads the demo registry (dated from today) and lists serials to try.
run: setup .env
	@$(BIN)/warranty-bot demo --if-empty
	$(BIN)/warranty-bot serve

# A first run gets a .env with a fresh desk token, so the local desk works at once (.env.example lists the rest).
.env:
	@printf '# Made by `make run`; every setting is described in .env.example.\nDESK_TOKEN=%s\n' \
		"$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(24))')" > .env
	@echo "created .env with a new DESK_TOKEN for the local desk at /desk"

## Set up and run every check: lint, types, the test suite (SQLite always, PostgreSQL when reachable).
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
