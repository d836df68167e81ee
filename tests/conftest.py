"""The test suite runs against real services and real processes, started once per session.

At import (before Django is set up) this starts an embedded PostgreSQL with
pgvector and an embedded Valkey on free ports in a temporary directory, unless
AIHUB_TEST_DATABASE_URL / AIHUB_TEST_REDIS_URL name servers to use instead
(the database must have pgvector available). The `hub` fixture then starts
daphne and Celery workers as separate processes sharing those services.
Tests build their own users, so nothing depends on test order.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.support.busy import INFERENCE_THREADS
from tests.support.processes import MODEL_CACHE, start_hub, start_services

RUN_DIR = Path(tempfile.mkdtemp(prefix="aihub-tests-"))


def _start_services() -> list:
    started, env = start_services(RUN_DIR)
    os.environ.update(env)
    os.environ["AIHUB_REQUEST_TIMEOUT_SECONDS"] = "60"
    # Image URLs the hub may fetch (tests/test_vision.py serves images on 127.0.0.1; "localhost" is listed to
    # show that a listed name resolving to a private address is still refused).
    os.environ["AIHUB_VISION_URL_HOSTS"] = "127.0.0.1,localhost"
    return started


_servers = _start_services()


def _stop_services():
    for server in reversed(_servers):
        server.stop()
    if not os.environ.get("AIHUB_TEST_KEEP_RUN_DIR"):
        shutil.rmtree(RUN_DIR, ignore_errors=True)


atexit.register(_stop_services)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

call_command("migrate", interactive=False, verbosity=0)

from apps.accounts.services import api_key_create  # noqa: E402
from apps.catalog.services import model_register  # noqa: E402
from tests.support.browser import chromium, staff_browser  # noqa: E402,F401 - browser tests' fixtures
from tests.support.tiny_models import build_tiny_chat_model  # noqa: E402

TINY_MODEL = "tiny:chat"
DEFAULT_MODEL = "smollm2:135m"
EMBEDDING_MODEL = "all-minilm:l6-v2"
TRANSCRIPTION_MODEL = "whisper:tiny.en"
SPEECH_MODEL = "hibari:tts"


@pytest.fixture(scope="session")
def models():
    """The catalog the hub serves: a tiny random model, the real default model and the real embedding model."""
    tiny_dir = build_tiny_chat_model(MODEL_CACHE / "tiny-chat")
    model_register(model_id=TINY_MODEL, path=tiny_dir)
    call_command("importmodel", builtin=DEFAULT_MODEL, verbosity=0)
    call_command("importmodel", builtin=EMBEDDING_MODEL, verbosity=0)
    # The audio defaults, registered as `runhub` does on first start (their files are used in place).
    call_command("importmodel", builtin=TRANSCRIPTION_MODEL, verbosity=0)
    call_command("importmodel", builtin=SPEECH_MODEL, verbosity=0)
    return {"tiny": TINY_MODEL, "default": DEFAULT_MODEL, "embedding": EMBEDDING_MODEL,
            "transcription": TRANSCRIPTION_MODEL, "speech": SPEECH_MODEL}


class Hub:
    def __init__(self, base_url: str, processes):
        self.base_url = base_url
        self.api_url = f"{base_url}/api/v1"
        self.ws_url = base_url.replace("http://", "ws://")
        self.processes = processes


@pytest.fixture(scope="session")
def hub(models):
    # Tests start further hubs (their own Redis database, this PostgreSQL database). A hub's sweep acts on every
    # row of its database and looks for workers in its own Redis only, so this hub's periodic sweep would take
    # their running requests and training jobs for lost ones and run them again here. It sweeps only when a
    # test asks (tests/test_sweeper.py starts a beat of its own).
    env = dict(os.environ, AIHUB_SWEEP_INTERVAL_SECONDS="86400")
    base_url, processes = start_hub(env, RUN_DIR / "logs", inference_threads=INFERENCE_THREADS)
    try:
        yield Hub(base_url, processes)
    finally:
        processes.stop()


class Account:
    """A user with a fresh API key; `auth` is the header dict."""

    def __init__(self, user, key, raw_key):
        self.user = user
        self.key = key
        self.raw_key = raw_key
        self.auth = {"Authorization": f"Bearer {raw_key}"}


def make_account(prefix: str = "user", *, staff: bool = False, scopes: list[str] | None = None,
                 expires_at=None) -> Account:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username=f"{prefix}-{uuid.uuid4().hex[:8]}", is_staff=staff)
    key, raw = api_key_create(user=user, name="tests", scopes=scopes, expires_at=expires_at)
    return Account(user, key, raw)


@pytest.fixture
def alice() -> Account:
    return make_account("alice")


@pytest.fixture
def bob() -> Account:
    return make_account("bob")


@pytest.fixture
def openai_client(hub, alice):
    from openai import OpenAI

    return OpenAI(base_url=hub.api_url, api_key=alice.raw_key, max_retries=0, timeout=120)
