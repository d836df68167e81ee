"""Start and stop the hub's real processes (daphne, Celery workers) for the tests."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from apps.core import supervisor
from apps.core.launcher import celery_worker, web_server

ROOT = Path(__file__).resolve().parents[2]
# Converting the real default model takes ~20 s; the tests and benchmarks keep it between runs.
MODEL_CACHE = ROOT / "var" / "test-models"


class ProcessGroup(supervisor.ProcessGroup):
    """The hub's processes for a test, run from the checkout: a log per process in `log_dir`, `restart(name)`
    as runhub's supervisor would, and every one stopped at once (apps/core/supervisor.py)."""

    def __init__(self, env: dict, log_dir: Path):
        super().__init__(env=env, log_dir=log_dir, cwd=ROOT, stop_timeout=15)

    def start_worker(self, name: str, queue: str, concurrency: int | None = None, env: dict | None = None,
                     beat: bool = False) -> subprocess.Popen:
        return self.start(name, celery_worker(name, queue, concurrency, beat=beat), env)

    def start_web(self, port: int, name: str = "web", env: dict | None = None) -> subprocess.Popen:
        return self.start(name, web_server("127.0.0.1", port), env)


def start_hub(env: dict, log_dir: Path, *, inference_threads: int | None = None) -> tuple[str, ProcessGroup]:
    """daphne on a free port plus one worker per GPU queue; returns the base URL once /health says 200.

    `inference_threads`: task threads of the inference worker (AIHUB_INFERENCE_THREADS unless given).
    """
    from aihub_project.embedded import free_port

    port = free_port()
    processes = ProcessGroup(env, log_dir)
    processes.start_web(port)
    processes.start_worker("inference", "gpu.inference", inference_threads)
    processes.start_worker("training", "gpu.training")
    processes.start_worker("default", "default", beat=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, processes)
    except Exception:
        processes.stop()
        raise
    return base_url, processes


def start_services(run_dir: Path) -> tuple[list, dict]:
    """Embedded PostgreSQL and Valkey in `run_dir` (unless AIHUB_TEST_*_URL name servers); the env to use them."""
    from aihub_project.embedded import EmbeddedPostgres, EmbeddedValkey, free_port

    started = []
    database_url = os.environ.get("AIHUB_TEST_DATABASE_URL")
    if not database_url:
        pg = EmbeddedPostgres(run_dir / "pgdata", free_port(), run_dir / "logs" / "postgres.log",
                              database="aihub_test")
        pg.start()
        started.append(pg)
        database_url = pg.url
    redis_url = os.environ.get("AIHUB_TEST_REDIS_URL")
    if not redis_url:
        valkey = EmbeddedValkey(run_dir / "valkey", free_port(), run_dir / "logs" / "valkey.log")
        valkey.start()
        started.append(valkey)
        redis_url = valkey.url
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "AIHUB_VAR_DIR": str(run_dir / "var"),
        "AIHUB_LOG_DIR": str(run_dir / "logs"),
        "AIHUB_MODEL_STORE": str(MODEL_CACHE),
        "AIHUB_DATASETS_ROOT": str(run_dir / "datasets"),
        "DJANGO_SETTINGS_MODULE": "aihub_project.settings",
    }
    (run_dir / "datasets").mkdir(parents=True, exist_ok=True)
    return started, env


def wait_until_listening(base_url: str, timeout: float = 60.0) -> None:
    """For a web process without workers (so never healthy): wait until it answers /health/live."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{base_url}/health/live", timeout=2)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def web_without_workers(name: str, *, redis_db: int, log_dir: Path, broker_only: bool = False,
                        **env_overrides: str) -> Iterator[tuple[str, dict]]:
    """A daphne process on a Redis database that no worker reads: every request it takes stays queued.

    With `broker_only`, only its broker is that database: rows, limits and event
    logs are the hub's, as when the hub's broker lost the messages.
    Yields its base URL and its environment. On the way out the requests it left
    queued are cancelled, so that they count against no later test's queue.
    """
    from aihub_project.embedded import free_port
    from apps.chat.models import GenerationRequest

    env = dict(os.environ)
    redis_url = env["REDIS_URL"].rsplit("/", 1)[0] + f"/{redis_db}"
    env.update({"CELERY_BROKER_URL": redis_url} if broker_only else {"REDIS_URL": redis_url}, **env_overrides)
    port = free_port()
    processes = ProcessGroup(env, log_dir)
    processes.start_web(port, name=name)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_listening(base_url)
        yield base_url, env
    finally:
        processes.stop()
        GenerationRequest.objects.filter(state="queued").update(state="cancelled")


def wait_until_healthy(base_url: str, processes: ProcessGroup, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for name, process in processes.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{processes.log(name)[-3000:]}")
        try:
            last = httpx.get(f"{base_url}/health", timeout=5)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"the hub did not become healthy in {timeout:.0f}s: {getattr(last, 'text', last)}")
