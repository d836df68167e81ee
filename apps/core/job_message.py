"""The wire form shared by the jobs that travel on worker job lists (embeddings, audio).

Those jobs are dataclasses pushed as JSON onto Redis lists (apps/catalog/job_lists.py)
and popped by the workers' job threads (workers/job_threads.py). Each carries the
moment the web gives up on it, so a worker skips a job nobody waits for any more.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Self


class JobMessage:
    """Mixin for a job dataclass with an `expires_at` field (epoch seconds)."""

    expires_at: float

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str) -> Self:
        return cls(**json.loads(raw))

    @property
    def expired(self) -> bool:
        return time.time() > self.expires_at
