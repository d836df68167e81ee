"""Start and stop the hub's real processes (daphne, Celery workers) for the tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from apps.core.launcher import celery_worker

ROOT = Path(__file__).resolve().parents[2]


class ProcessGroup:
    def __init__(self, env: dict, log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        self.processes[name] = process
        return process

    def start_worker(self, name: str, queue: str, concurrency: int = 1) -> subprocess.Popen:
        return self.start(name, celery_worker(name, queue, concurrency))

    def start_web(self, port: int) -> subprocess.Popen:
        return self.start("web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                  "aihub_project.asgi:application"])

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes.values():
            _killpg(process, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(process, signal.SIGKILL)
            process.wait()


def _killpg(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


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
