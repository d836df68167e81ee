"""`manage.py runhub` (what `make run` runs): everything up behind passwords, and nothing left running
however it is stopped (Ctrl-C, SIGTERM to its process group, signals during the stop, kill -9)."""
import os
import signal
import stat
import subprocess
import sys
import time

import httpx
import psutil
import psycopg
import pytest
import redis

from aihub_project.embedded import free_port, port_is_open
from tests.support.processes import MODEL_CACHE, ROOT


def _env(var_dir, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({
        "AIHUB_VAR_DIR": str(var_dir), "AIHUB_LOG_DIR": str(var_dir.parent / "logs"),
        "AIHUB_MODEL_STORE": str(MODEL_CACHE), "AIHUB_PORT": str(free_port()), "AIHUB_FLOWER_PORT": str(free_port()),
        "AIHUB_EMBEDDED_PG_PORT": str(free_port()), "AIHUB_EMBEDDED_REDIS_PORT": str(free_port()),
        "AIHUB_STOP_TIMEOUT_SECONDS": "10", **extra,
    })
    return env


@pytest.fixture(scope="module")
def quick_env(tmp_path_factory):
    """One var/ for the quick tests: the database is created and migrated once, later runs reuse it."""
    return _env(tmp_path_factory.mktemp("runhub") / "var")


def _start(env, log_path, argv=(sys.executable, "manage.py", "runhub")):
    log = open(log_path, "ab")
    process = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    log.close()
    return process


def _start_quick(env, log_path):
    return _start(env, log_path, (sys.executable, "manage.py", "runhub", "--no-flower"))


def _wait_healthy(process, env, log_path, timeout=120):
    url = f"http://127.0.0.1:{env['AIHUB_PORT']}/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"runhub never became healthy:\n{log_path.read_text()[-3000:]}")


def _hub_processes(env):
    """Every process on the machine that belongs to this hub: all of them inherit its AIHUB_VAR_DIR."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("AIHUB_VAR_DIR") == env["AIHUB_VAR_DIR"]:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _still_running(processes, timeout=10):
    """Those of `processes` still running after up to `timeout` s (orphans' zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        running = []
        for process in processes:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
            except psutil.NoSuchProcess:
                continue
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.2)


def _assert_nothing_is_left(process, env, log_path):
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"runhub did not exit:\n{log_path.read_text()[-3000:]}") from None
    alive = _still_running(_hub_processes(env))
    assert alive == [], [(p.pid, p.cmdline()) for p in alive] + [log_path.read_text()[-3000:]]
    for port in ("AIHUB_PORT", "AIHUB_EMBEDDED_PG_PORT", "AIHUB_EMBEDDED_REDIS_PORT"):
        assert not port_is_open(int(env[port])), port


def _interrupt_and_check_nothing_is_left(process, env, log_path):
    descendants = psutil.Process(process.pid).children(recursive=True)
    assert len(descendants) >= 7  # postgres, valkey, daphne, three workers and their pools, flower
    os.kill(process.pid, signal.SIGINT)
    _assert_nothing_is_left(process, env, log_path)


def _private(path):
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_runhub_starts_everything_behind_passwords_stops_everything_and_keeps_its_data(tmp_path):
    env = _env(tmp_path / "var")
    var = tmp_path / "var"
    log_path = tmp_path / "runhub.log"

    process = _start(env, log_path)
    _wait_healthy(process, env, log_path)
    flower = f"http://127.0.0.1:{env['AIHUB_FLOWER_PORT']}/"
    assert httpx.get(flower, timeout=10).status_code == 401  # Flower shows task arguments: never open
    user, password = (var / "flower-credentials.txt").read_text().strip().split(":", 1)
    assert httpx.get(flower, auth=(user, password), timeout=10).status_code == 200
    # Read-only (AIHUB_FLOWER_READ_ONLY): its control API refuses before even looking for the worker (404).
    grow = httpx.post(f"{flower}api/worker/pool/grow/inference@nowhere", auth=(user, password), timeout=10)
    assert grow.status_code == 403
    for name in ("admin-credentials.txt", "flower-credentials.txt", "postgres-password.txt", "valkey-password.txt"):
        assert _private(var / name), name
    pg_port, redis_port = int(env["AIHUB_EMBEDDED_PG_PORT"]), int(env["AIHUB_EMBEDDED_REDIS_PORT"])
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host="127.0.0.1", port=pg_port, user="aihub", dbname="aihub", connect_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_port).set("key", "value")
    # A second terminal's command reaches the servers with the passwords settings.py reads from var/.
    second = subprocess.run([sys.executable, "manage.py", "createapikey", "admin", "--name", "second-terminal"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    _interrupt_and_check_nothing_is_left(process, env, log_path)
    first_output = log_path.read_text()
    assert "Created admin user" in first_output

    # A second run reuses the database: no new admin, the model is already in the catalog.
    process = _start(env, log_path)
    _wait_healthy(process, env, log_path)
    _interrupt_and_check_nothing_is_left(process, env, log_path)
    second_output = log_path.read_text()[len(first_output):]
    assert "Created admin user" not in second_output
    assert "Preparing the default model" not in second_output


def test_a_sigterm_to_the_process_group_of_make_run_stops_everything(quick_env, tmp_path):
    # GNU make forwards the SIGTERM its group got to runhub, which got it too: two signals, back to back.
    makefile = tmp_path / "Makefile"
    makefile.write_text(f"run:\n\t{sys.executable} manage.py runhub --no-flower\n")
    log_path = tmp_path / "runhub.log"
    make = _start(quick_env, log_path, ("make", "-f", str(makefile), "run"))
    _wait_healthy(make, quick_env, log_path)
    os.killpg(make.pid, signal.SIGTERM)
    _assert_nothing_is_left(make, quick_env, log_path)


def test_a_stop_signal_during_start_up_stops_what_was_already_started(quick_env, tmp_path):
    log_path = tmp_path / "runhub.log"
    process = _start_quick(quick_env, log_path)
    deadline = time.monotonic() + 60
    while not port_is_open(int(quick_env["AIHUB_EMBEDDED_PG_PORT"])):  # PostgreSQL up, the rest still starting
        assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGTERM)
    _assert_nothing_is_left(process, quick_env, log_path)


def test_a_flood_of_sigint_and_sigterm_through_the_whole_stop_still_stops_everything(quick_env, tmp_path):
    log_path = tmp_path / "runhub.log"
    process = _start_quick(quick_env, log_path)
    _wait_healthy(process, quick_env, log_path)
    os.kill(process.pid, signal.SIGINT)
    # Signals as fast as they can be sent while stop_all begins, then a steady stream while it stops
    # the children and then the embedded servers.
    burst_until = time.monotonic() + 0.5
    while time.monotonic() < burst_until:
        os.killpg(process.pid, signal.SIGTERM)
        os.kill(process.pid, signal.SIGINT)
    while process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            os.kill(process.pid, signal.SIGINT)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    _assert_nothing_is_left(process, quick_env, log_path)


def test_after_kill_9_of_the_launcher_the_next_run_stops_the_leftovers_and_starts(quick_env, tmp_path):
    log_path = tmp_path / "runhub.log"
    process = _start_quick(quick_env, log_path)
    _wait_healthy(process, quick_env, log_path)
    children = psutil.Process(process.pid).children()
    leftovers = psutil.Process(process.pid).children(recursive=True)
    process.kill()
    process.wait()
    assert all(p.is_running() for p in children)  # the workers, daphne and both servers outlive it

    process = _start_quick(quick_env, log_path)
    assert _still_running(leftovers, timeout=90) == []  # before this, the old web would answer /health
    _wait_healthy(process, quick_env, log_path)
    output = log_path.read_text()
    assert "left running by an earlier run" in output
    os.killpg(process.pid, signal.SIGTERM)
    _assert_nothing_is_left(process, quick_env, log_path)


def test_a_worker_that_dies_is_restarted_and_the_hub_keeps_running(quick_env, tmp_path):
    log_path = tmp_path / "runhub.log"
    process = _start_quick(quick_env, log_path)
    _wait_healthy(process, quick_env, log_path)

    def default_worker():
        found = []
        for child in psutil.Process(process.pid).children():
            try:
                if "default@%h" in child.cmdline():
                    found.append(child)
            except psutil.ZombieProcess:  # the killed one, until the launcher notices
                continue
        return found

    (worker,) = default_worker()
    os.killpg(worker.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not [p for p in default_worker() if p.pid != worker.pid]:
        assert process.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.2)
    assert "default worker exited with -9; restarting it" in log_path.read_text()
    _wait_healthy(process, quick_env, log_path)
    os.killpg(process.pid, signal.SIGTERM)
    _assert_nothing_is_left(process, quick_env, log_path)
