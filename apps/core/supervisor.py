"""Child processes in process groups of their own: start, restart, kill and stop them; and keep them running.

`ProcessGroup` is the mechanics, shared by the tests and benchmarks (tests/support/processes.py: a log file
per process, `restart(name)`, every process stopped at once) and by the launcher's `Supervisor` below
(`manage.py runhub`: restarts a crashed child with backoff, stops the children one by one in reverse order,
then the embedded servers, and records every child in a state file). What the hub runs, each process's
command line, is in apps/core/launcher.py.

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
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
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


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal a child's whole process group (its prefork pool processes too); a group already gone is fine."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


class ProcessGroup:
    """Children started in process groups of their own, by name.

    `env`: the environment under each child's own (None: a child gets its own `env`, or else inherits
    ours). `log_dir`: each child's output is appended to `<log_dir>/<name>.log` (None: it shares ours).
    `guard`: a context manager held while a child is started and recorded (the launcher holds stop signals).
    """

    def __init__(self, *, env: dict | None = None, log_dir: Path | None = None, cwd: Path | None = None,
                 stop_timeout: float = 15.0, guard: Callable[[], AbstractContextManager] = nullcontext):
        self.env = env
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.cwd = cwd
        self.stop_timeout = stop_timeout
        self.guard = guard
        self.children: dict[str, Child] = {}

    @property
    def processes(self) -> dict[str, subprocess.Popen]:
        return {name: child.process for name, child in self.children.items() if child.process is not None}

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        child = Child(name, argv, env)
        with self.guard():
            self._spawn(child)
            self.children[name] = child
            self._recorded()
        return child.process

    def _recorded(self) -> None:
        """A child was started or started again (the launcher writes its state file)."""

    def _spawn(self, child: Child) -> None:
        env = child.env if self.env is None else {**self.env, **(child.env or {})}
        if self.log_dir is None:
            child.process = subprocess.Popen(child.argv, cwd=self.cwd, env=env, start_new_session=True)
            return
        with open(self.log_dir / f"{child.name}.log", "ab") as log:
            child.process = subprocess.Popen(child.argv, cwd=self.cwd, env=env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def restart(self, name: str) -> subprocess.Popen:
        """Start `name` again as it was started (after it died, or killing what is left of it); its log goes on."""
        child = self.children[name]
        signal_group(child.process, signal.SIGKILL)
        child.process.wait()
        with self.guard():
            self._spawn(child)
            self._recorded()
        return child.process

    def kill(self, name: str) -> None:
        """SIGKILL `name`'s group and forget it."""
        child = self.children.pop(name)
        signal_group(child.process, signal.SIGKILL)
        child.process.wait()

    def stop(self) -> None:
        """Stop every child at once: SIGTERM to every group, `stop_timeout` for them all, then SIGKILL."""
        processes = list(self.processes.values())
        for process in processes:
            signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            signal_group(process, signal.SIGKILL)
            process.wait()


class Supervisor(ProcessGroup):
    """The launcher's: restart a child that crashes; on a stop signal, stop all.

    Own process groups mean the terminal's Ctrl-C reaches only the launcher,
    which then stops the children in reverse order (web first) and kills each
    whole group, so prefork pool processes go too; the embedded servers the
    children use stop last. Every child is recorded in `state_file`, so a
    launcher that was killed outright leaves a list of what to stop next time.
    """

    def __init__(self, *, state_file: Path, stop_timeout: float = 20.0, restarts_per_minute: int = 5,
                 max_backoff: float = 16.0):
        # Children inherit our environment and output; starting one and recording it holds stop signals.
        super().__init__(stop_timeout=stop_timeout, guard=stop_signals.held)
        self.servers: list = []  # embedded servers (aihub_project.embedded): stopped after every child
        self.state_file = Path(state_file)
        self.restarts_per_minute = restarts_per_minute
        self.max_backoff = max_backoff
        self._state_saved = False  # the state file is ours to remove only once we wrote it

    def stop_leftovers(self) -> list[str]:
        """Stop what a launcher that died (kill -9) left running; see apps/core/runstate.py."""
        return runstate.leftovers_stop(state_file=self.state_file, timeout=self.stop_timeout)

    def add_server(self, server) -> None:
        """Register an embedded server *before* starting it, so a stop during its start-up still stops it."""
        self.servers.append(server)

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        process = super().start(name, argv, env)
        logger.info("started %s (pid %d)", name, process.pid)
        return process

    def _recorded(self) -> None:
        runstate.state_save(state_file=self.state_file,
                            children=[(c.name, c.process.pid) for c in self.children.values() if c.process])
        self._state_saved = True

    def run_forever(self) -> int:
        """Wait until a stop signal (exit code 0) or a child that keeps crashing (exit code 1)."""
        try:
            while True:
                for child in list(self.children.values()):
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
            signal_group(child.process, signal.SIGKILL)
            child.restarts = [t for t in child.restarts if now - t < 60]
            if len(child.restarts) >= self.restarts_per_minute:
                logger.error("%s exited with %s after %d restarts within a minute; stopping the hub",
                             child.name, child.process.returncode, len(child.restarts))
                return False
            delay = min(self.max_backoff, 2.0 ** len(child.restarts))
            logger.error("%s exited with %s; restarting it in %.0fs", child.name, child.process.returncode, delay)
            child.restart_at = now + delay
        elif now >= child.restart_at:
            with self.guard():
                self._spawn(child)
                self._recorded()
            child.restarts.append(now)
            child.restart_at = None
            logger.warning("restarted %s (pid %d)", child.name, child.process.pid)
        return True

    def stop_all(self) -> None:
        """Stop every child, then every embedded server. Safe to call again: each step is idempotent."""
        stop_signals.stopping = True  # from here on no signal raises: the stop sequence always completes
        for child in reversed(list(self.children.values())):
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
            signal_group(process, signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", child.name, self.stop_timeout)
        # Whatever is left in the group (pool processes of a killed worker) goes now. A child that
        # crashed and waits for its restart had its group killed then: the number may be reused since.
        if child.restart_at is None:
            signal_group(process, signal.SIGKILL)
        process.wait()
