"""What `runhub` started, on disk, so that a run killed outright (kill -9) leaves nothing running for long.

The launcher writes `var/runhub.json` when it starts a child and removes it
after a clean stop. Each child leads its own process group (its pid is the
group id), and its prefork pool processes live in that group. The next run
reads the file: a group that still has members started after the dead
launcher is a leftover of that run, and is stopped (SIGTERM, then SIGKILL) before anything new
starts; the start time rules out a pid the system has since given to an
unrelated process. A launcher that is still alive means another hub is using
this `var/`: that is refused, not stopped.

Embedded servers are not listed here: aihub_project/embedded.py recognises its
own leftovers by their data directory, with or without this file.
"""
from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import psutil

from aihub_project.private_files import write_private_file

logger = logging.getLogger("aihub.launcher")


class LeftoverError(RuntimeError):
    """An earlier run is still alive, or left processes this one may not stop."""


def state_save(*, state_file: Path, children: list[tuple[str, int]]) -> None:
    me = psutil.Process()
    state = {
        "launcher": {"pid": me.pid, "started": me.create_time(), "cmdline": me.cmdline()},
        "children": [{"name": name, "pid": pid, "pgid": pid, "started": _create_time(pid)} for name, pid in children],
    }
    write_private_file(state_file, json.dumps(state, indent=1) + "\n")


def leftovers_stop(*, state_file: Path, timeout: float) -> list[str]:
    """Stop the process groups an earlier, dead launcher left; return a line for each one stopped."""
    try:
        state = json.loads(Path(state_file).read_text())
    except FileNotFoundError:
        return []
    except ValueError:
        logger.warning("ignoring %s: not valid JSON", state_file)
        Path(state_file).unlink()
        return []
    launcher = state["launcher"]
    if launcher["pid"] != os.getpid() and _create_time(launcher["pid"]) == launcher["started"]:
        raise LeftoverError(
            f"Another hub (runhub, pid {launcher['pid']}) is running with {Path(state_file).parent}: "
            f"stop it first (Ctrl-C in its terminal, or kill -TERM {launcher['pid']}).")
    stopped = []
    for child in state["children"]:
        members = _group_members(child["pgid"], since=launcher["started"])
        if not members:
            continue
        line = (f"stopping {child['name']} (process group {child['pgid']}, {len(members)} processes) "
                f"left running by an earlier run (pid {launcher['pid']}) that did not stop")
        logger.warning(line)
        try:
            os.killpg(child["pgid"], signal.SIGTERM)
            _, alive = psutil.wait_procs(members, timeout=timeout)
            if alive:
                os.killpg(child["pgid"], signal.SIGKILL)
                psutil.wait_procs(alive, timeout=5)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise LeftoverError(f"{child['name']} (process group {child['pgid']}) of an earlier run is still "
                                f"running and this user may not stop it: kill -TERM -{child['pgid']}") from exc
        stopped.append(line)
    Path(state_file).unlink()
    return stopped


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _group_members(pgid: int, *, since: float) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter(["create_time"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["create_time"] >= since:
                members.append(process)
        except (ProcessLookupError, PermissionError):
            continue
    return members
