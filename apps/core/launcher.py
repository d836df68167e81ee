"""Runs the hub's processes in the foreground, restarts the ones that crash, and stops every one on the way out.

Signals. SIGINT and SIGTERM both stop the hub, and often come more than once:
`make` forwards the SIGTERM its process group got to the launcher, which got
it too; an impatient operator presses Ctrl-C twice. The first one raises
`StopHub` (so a start-up step such as a migration is interrupted); every later
one is only noted. A stop signal that lands while a child is being started and
recorded is held until it is recorded (so no child is started but forgotten),
and none raises once `stop_all` has begun, so the stop sequence is never
abandoned half-way: children in reverse order, then the embedded servers.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from apps.core import runstate

logger = logging.getLogger("aihub.launcher")


class StopHub(KeyboardInterrupt):
    """The first SIGINT/SIGTERM: stop everything. A KeyboardInterrupt, so `except Exception` never swallows it."""


class StopSignals:
    """The process's SIGINT/SIGTERM handler: raise StopHub at most once, never while held or stopping."""

    def __init__(self):
        self.received: int | None = None
        self.stopping = False
        self._raised = False
        self._held = 0

    def install(self) -> None:
        # SIGINT is set explicitly: a process started in the background by a shell
        # inherits SIGINT as ignored, and would then never stop on Ctrl-C.
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
        self._raise_once()

    def _raise_once(self) -> None:
        if self.received is None or self._raised or self._held or self.stopping:
            return
        self._raised = True
        raise StopHub(signal.Signals(self.received).name)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Defer a stop signal until the block is done (start a process *and* record it)."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        self._raise_once()


# Signal handlers belong to the process, so there is one of these per process.
stop_signals = StopSignals()


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    restarts: list[float] = field(default_factory=list)  # monotonic times of recent restarts
    restart_at: float | None = None  # set while a crashed child waits for its restart


def web_server(host: str, port: int) -> list[str]:
    # daphne with TCP_NODELAY (aihub_project/web.py)
    return [sys.executable, "-m", "aihub_project.web", "-b", host, "-p", str(port), "aihub_project.asgi:application"]


def celery_worker(name: str, queue: str, concurrency: int | None = None, *, beat: bool = False) -> list[str]:
    """A worker consuming `queue` (comma-separated names), with `concurrency` pool slots.

    One that consumes the inference queue runs Celery's threads pool, AIHUB_INFERENCE_THREADS threads
    unless told: one process owns the device and batches the requests its threads hand to it
    (docs/queues.md). Every other worker runs prefork pool processes, one unless told. `beat`: this
    worker also runs the scheduler of the periodic sweep (celeryconfig.beat_schedule); one per hub.
    """
    from django.conf import settings

    import celeryconfig

    if celeryconfig.INFERENCE_QUEUE in queue.split(","):
        pool, concurrency = "threads", concurrency or settings.AIHUB_INFERENCE_THREADS
    else:
        pool, concurrency = "prefork", concurrency or 1
    return [sys.executable, "-m", "celery", "-A", "aihub_project", "worker", "-Q", queue,
            "-c", str(concurrency), "-n", f"{name}@%h", "--pool", pool, "-l", "INFO",
            "--without-mingle", "--without-gossip", *(["--beat"] if beat else [])]


class Supervisor:
    """Start children in their own process groups; restart one that crashes; on a stop signal, stop all.

    Own process groups mean the terminal's Ctrl-C reaches only the launcher,
    which then stops the children in reverse order (web first) and kills each
    whole group, so prefork pool processes go too; the embedded servers the
    children use stop last. Every child is recorded in `state_file`, so a
    launcher that was killed outright leaves a list of what to stop next time.
    """

    def __init__(self, *, state_file: Path, stop_timeout: float = 20.0, restarts_per_minute: int = 5,
                 max_backoff: float = 16.0):
        self.children: list[Child] = []
        self.servers: list = []  # embedded servers (aihub_project.embedded): stopped after every child
        self.state_file = Path(state_file)
        self.stop_timeout = stop_timeout
        self.restarts_per_minute = restarts_per_minute
        self.max_backoff = max_backoff
        self._state_saved = False  # the state file is ours to remove only once we wrote it

    def stop_leftovers(self) -> list[str]:
        """Stop what a launcher that died (kill -9) left running; see apps/core/runstate.py."""
        return runstate.leftovers_stop(state_file=self.state_file, timeout=self.stop_timeout)

    def add_server(self, server) -> None:
        """Register an embedded server *before* starting it, so a stop during its start-up still stops it."""
        self.servers.append(server)

    def start(self, name: str, argv: list[str], env: dict | None = None) -> Child:
        child = Child(name, argv, env)
        with stop_signals.held():
            self._spawn(child)
            self.children.append(child)
            self._save_state()
        logger.info("started %s (pid %d)", name, child.process.pid)
        return child

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(child.argv, env=child.env, start_new_session=True)

    def _save_state(self) -> None:
        runstate.state_save(state_file=self.state_file,
                            children=[(c.name, c.process.pid) for c in self.children if c.process])
        self._state_saved = True

    def run_forever(self) -> int:
        """Wait until a stop signal (exit code 0) or a child that keeps crashing (exit code 1)."""
        try:
            while True:
                for child in self.children:
                    if not self._keep_alive(child):
                        return 1
                time.sleep(0.5)
        except StopHub:
            return 0

    def _keep_alive(self, child: Child) -> bool:
        """Restart a child that exited, after a backoff; False when it exited too often to keep trying."""
        if child.process.poll() is None:
            return True
        now = time.monotonic()
        if child.restart_at is None:
            # What is left of its group (prefork pool processes) goes now, before a new one starts.
            self._signal_group(child.process, signal.SIGKILL)
            child.restarts = [t for t in child.restarts if now - t < 60]
            if len(child.restarts) >= self.restarts_per_minute:
                logger.error("%s exited with %s after %d restarts within a minute; stopping the hub",
                             child.name, child.process.returncode, len(child.restarts))
                return False
            delay = min(self.max_backoff, 2.0 ** len(child.restarts))
            logger.error("%s exited with %s; restarting it in %.0fs", child.name, child.process.returncode, delay)
            child.restart_at = now + delay
        elif now >= child.restart_at:
            with stop_signals.held():
                self._spawn(child)
                self._save_state()
            child.restarts.append(now)
            child.restart_at = None
            logger.warning("restarted %s (pid %d)", child.name, child.process.pid)
        return True

    def stop_all(self) -> None:
        """Stop every child, then every embedded server. Safe to call again: each step is idempotent."""
        stop_signals.stopping = True  # from here on no signal raises: the stop sequence always completes
        for child in reversed(self.children):
            try:
                self._stop(child)
            except Exception:  # noqa: BLE001 - one child's trouble must not leave the others running
                logger.exception("could not stop %s", child.name)
        for server in reversed(self.servers):
            try:
                if server.process is not None and server.process.poll() is None:
                    logger.info("stopping embedded %s", server.name)
                server.stop()
            except Exception:  # noqa: BLE001
                logger.exception("could not stop the embedded %s", server.name)
        if self._state_saved:
            self.state_file.unlink(missing_ok=True)

    def _stop(self, child: Child) -> None:
        process = child.process
        if process is None:
            return
        if process.poll() is None:
            logger.info("stopping %s", child.name)
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", child.name, self.stop_timeout)
        # Whatever is left in the group (pool processes of a killed worker) goes now. A child that
        # crashed and waits for its restart had its group killed then: the number may be reused since.
        if child.restart_at is None:
            self._signal_group(process, signal.SIGKILL)
        process.wait()

    @staticmethod
    def _signal_group(process: subprocess.Popen, signum: int) -> None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass
