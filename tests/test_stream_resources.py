"""What an open or abandoned stream costs the web process: no database connection, no reader left behind.

These run a web process of their own, with no worker on its Redis database,
so requests stay queued and every stream stays open as long as its client wants.
"""
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest
import redis

from apps.core.events import deadline_key
from tests.conftest import RUN_DIR, make_account
from tests.support.processes import web_without_workers

HI = [{"role": "user", "content": "hi"}]
POOL_SIZE = 2


@pytest.fixture(scope="module")
def idle_web(models):
    """A web process with a two-connection database pool and no workers behind it."""
    with web_without_workers("web-idle", redis_db=4, log_dir=RUN_DIR / "logs", AIHUB_MAX_QUEUE="0",
                             DATABASE_POOL_MAX_SIZE=str(POOL_SIZE), DATABASE_POOL_TIMEOUT_SECONDS="3") as (base, env):
        yield base, redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)


def _stream(client: httpx.Client, account):
    return client.stream("POST", "/api/v1/chat/completions", headers=account.auth, json={
        "model": "tiny:chat", "messages": HI, "max_tokens": 4, "stream": True})


def test_open_streams_hold_no_database_connection(idle_web):
    base, _ = idle_web
    account = make_account("streams")
    streams = 3 * POOL_SIZE
    with httpx.Client(base_url=base, timeout=10) as client, ExitStack() as open_streams:
        for _ in range(streams):
            response = open_streams.enter_context(_stream(client, account))
            assert response.status_code == 200, response.read()
            next(response.iter_lines())  # the first chunk: the stream is live
        # Every stream above still waits for its tokens; the web process still serves.
        started = time.monotonic()
        listing = client.get("/api/v1/chat/conversations", headers=account.auth)
        assert listing.status_code == 200, listing.text
        assert listing.json()["total"] == streams
        assert time.monotonic() - started < 2


def test_streams_closed_by_their_clients_stop_holding_their_request(idle_web):
    base, valkey = idle_web
    account = make_account("leavers")

    def open_and_leave(_):
        with httpx.Client(base_url=base, timeout=10) as client, _stream(client, account) as response:
            assert response.status_code == 200
            return response.headers["x-aihub-request-id"]

    with ThreadPoolExecutor(4) as pool:
        request_ids = list(pool.map(open_and_leave, range(40)))
    # A reader renews its lease every 0.2 s while it reads; a reader whose client left must not.
    time.sleep(1.5)
    now = time.time()
    still_held = [request_id for request_id in request_ids
                  if float(valkey.get(deadline_key(request_id)) or 0) > now]
    assert still_held == []
