# The two commands a newcomer needs: `make run` and `make test`. See README.md.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Local development settings (DJANGO_DEBUG=1, a generated secret key), written once by `setup`
# and read by the settings whenever the environment does not say otherwise, so that the README's
# `.venv/bin/python manage.py ...` commands work as written; production sets DJANGO_DEBUG=0 and
# real secrets and never reads it (README, "Configuration").
export PLATFORM_ENV_FILE ?= .env
export TRL_EXPERIMENTAL_SILENCE ?= 1
# Offline hub only where nothing may be downloaded (the tests, the demo): `make run` trains hub
# models by name, so its worker must be able to fetch them (HF_TOKEN for gated ones).
OFFLINE := HF_HUB_OFFLINE=1
PYTEST_ARGS ?=

.PHONY: run test setup install browser demo lint format bench clean mutate

$(BIN)/.installed: requirements.txt
	@test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV) || { \
	  echo "Python's venv module is missing (Debian splits it out): installing python3-venv..."; \
	  rm -rf $(VENV); SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv >/dev/null \
	  && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $@

install: $(BIN)/.installed

$(PLATFORM_ENV_FILE):
	@umask 077 && { \
	  echo "# Local development settings, written by make (git-ignored). The environment wins over"; \
	  echo "# them; production (DJANGO_DEBUG=0) never reads this file. Delete it to get a new key."; \
	  echo "DJANGO_DEBUG=1"; \
	  echo "DJANGO_SECRET_KEY=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(64))')"; \
	} > $@.tmp && mv $@.tmp $@
	@echo "Wrote $@ (local development settings: DJANGO_DEBUG=1, a generated secret key)."

setup: install $(PLATFORM_ENV_FILE)
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py seed_demo

# Browser tests drive Debian's Chromium (Playwright's own download needs the network).
browser:
	@command -v chromium >/dev/null || { \
	  echo "Installing Debian's chromium for the browser tests..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

run: setup
	@echo
	@echo "RLHF platform: http://$(HOST):$(PORT)/  (admin: http://$(HOST):$(PORT)/admin/)"
	@echo "Log in with one of the demo accounts above. The whole RLHF loop: make demo"
	@echo "Stop with Ctrl+C."
	@trap 'kill 0' INT TERM EXIT; \
	  $(BIN)/python manage.py worker --loglevel WARNING & \
	  $(BIN)/python manage.py runserver $(HOST):$(PORT)

test: setup browser
	$(OFFLINE) $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(OFFLINE) $(BIN)/python manage.py rlhf_demo

# Mutation testing of the core rules (tests/mutants.py): which deliberate mistakes the suite misses.
MUTATE_ARGS ?=
mutate: install browser
	$(BIN)/python tests/mutate.py --report docs/mutations.md $(MUTATE_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var/broker var/test-*.sqlite3
