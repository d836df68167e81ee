"""Database connections: handing one back before a long response, and riding out a PostgreSQL restart."""
from __future__ import annotations

import functools
import logging
import time

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, close_old_connections, connection

logger = logging.getLogger(__name__)

# A restart (an upgrade, a crash and recovery) takes seconds; past this the error is the answer.
RETRY_SECONDS = 20.0


def retry_on_lost_connection(fn):
    """Run `fn` again on a fresh connection while the database is unreachable, for up to RETRY_SECONDS.

    For the writes that end a request on a worker: if one of them fails, the
    row stays `running` on a live process that nobody recovers, and its client
    waits until it gives up. Only for functions that are safe to run twice
    (compare-and-set writes, a whole transaction), and never inside an outer
    transaction, which a lost connection has already rolled back.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        deadline, delay = time.monotonic() + RETRY_SECONDS, 0.1
        while True:
            try:
                return fn(*args, **kwargs)
            except (OperationalError, InterfaceError) as exc:
                if connection.in_atomic_block or time.monotonic() > deadline:
                    raise
                logger.warning("%s: database unreachable (%s); retrying", fn.__name__, exc)
                try:
                    connection.close()
                except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
                    pass
                time.sleep(delay)
                delay = min(2 * delay, 1.0)
    return wrapper


async def release_database_connection() -> None:
    """Hand the request's database connection back before a long response.

    Django returns it when the response ends (`request_finished`); a stream or a
    wait for a whole answer lasts seconds to minutes, and would hold one of the
    web process's pooled connections all that time (settings.py, DATABASE_POOL).
    Runs on the request's own thread, which holds the connection.
    """
    await sync_to_async(close_old_connections)()
