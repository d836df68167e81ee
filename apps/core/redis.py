"""Redis/Valkey clients: one sync pool per process, one async client per event loop."""
from __future__ import annotations

import asyncio
import functools
import weakref

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# A Valkey restart (an upgrade, a crash, `systemctl restart`) takes a second or
# two; commands retry across it instead of failing every request in flight:
# 16 tries with a backoff doubling from 50 ms to 1 s wait about 12 s in all.
# Only connection errors and timeouts are retried, never a command's own error.
_RETRIES = 16


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=1.0, base=0.05)


@functools.cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, decode_responses=True, retry=Retry(_backoff(), _RETRIES))


_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = (
    weakref.WeakKeyDictionary()
)


def async_client() -> aioredis.Redis:
    # A redis.asyncio connection is bound to the loop that opened it; daphne runs
    # one loop, but tests and management commands may run others.
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(settings.REDIS_URL, decode_responses=True,
                                         retry=AsyncRetry(_backoff(), _RETRIES))
        _async_clients[loop] = client
    return client
