"""Runs the hub's processes in the foreground and stops every one of them on the way out."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

logger = logging.getLogger("aihub.launcher")


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = field(default=None, repr=False)


def web_server(host: str, port: int) -> list[str]:
    # daphne with TCP_NODELAY (aihub_project/web.py)
    return [sys.executable, "-m", "aihub_project.web", "-b", host, "-p", str(port), "aihub_project.asgi:application"]


def celery_worker(name: str, queue: str, concurrency: int, *, beat: bool = False) -> list[str]:
    # `beat`: this worker also runs the scheduler of the periodic sweep (celeryconfig.beat_schedule); one per hub.
    return [sys.executable, "-m", "celery", "-A", "aihub_project", "worker", "-Q", queue,
            "-c", str(concurrency), "-n", f"{name}@%h", "--pool", "prefork", "-l", "INFO",
            "--without-mingle", "--without-gossip", *(["--beat"] if beat else [])]


class Supervisor:
    """Start children in their own process groups; on SIGINT/SIGTERM or any child's death, stop all.

    Own process groups mean the terminal's Ctrl-C reaches only the supervisor,
    which then stops the children in reverse order (web first, servers last)
    and kills each whole group, so prefork pool processes go too.
    """

    def __init__(self, stop_timeout: float = 20.0):
        self.children: list[Child] = []
        self.stop_timeout = stop_timeout
        self._stopping = False

    def start(self, name: str, argv: list[str], env: dict | None = None) -> Child:
        child = Child(name, argv)
        child.process = subprocess.Popen(argv, env=env, start_new_session=True)
        self.children.append(child)
        logger.info("started %s (pid %d)", name, child.process.pid)
        return child

    def run_forever(self) -> int:
        """Wait until a signal or a child exit; return the exit code for the launcher."""
        exit_code = 0
        try:
            while True:
                for child in self.children:
                    if child.process.poll() is not None:
                        logger.error("%s exited with %s; stopping the hub", child.name, child.process.returncode)
                        exit_code = 1
                        raise KeyboardInterrupt
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop_all()
        return exit_code

    @staticmethod
    def stop_on_signals() -> None:
        """SIGINT and SIGTERM both stop the hub.

        SIGINT is set explicitly: a process started in the background by a
        shell inherits SIGINT as ignored, and Python then never raises
        KeyboardInterrupt.
        """
        def on_signal(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def stop_all(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        # A second Ctrl-C (or SIGTERM) must not abandon children half-stopped; the process is on its way out.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(self.children):
            self._stop(child)

    def _stop(self, child: Child) -> None:
        process = child.process
        if process.poll() is None:
            logger.info("stopping %s", child.name)
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", child.name, self.stop_timeout)
        # Whatever is left in the group (pool processes of a killed worker) goes now.
        self._signal_group(process, signal.SIGKILL)
        process.wait()

    @staticmethod
    def _signal_group(process: subprocess.Popen, signum: int) -> None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass
