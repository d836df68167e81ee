"""Benchmark (issue #10): the hub under faults, with a steady load of streaming clients.

1. The inference worker (one process: it owns the device, its models and the
   batch of every request it holds; what an out-of-memory killer would pick)
   is killed with SIGKILL, `--kills` times, every `--interval` seconds, while
   `--clients` clients stream chat completions back to back; a supervisor
   thread starts it again, as `runhub`'s does.
2. Embedded Valkey (broker, event logs, limits) is stopped and started again once.
3. Embedded PostgreSQL is stopped and started again once.

Every request must end: a `done` or an error in the API's shape, within
`--request-timeout` seconds (else it counts as hung). Afterwards the request
rows are checked: none left queued or running, none answered twice (at most
one assistant message each), and for every answer a client saw complete, the
streamed text equals the stored answer (no token lost or sent twice). For each
fault: how long until a request that started after it is answered again.

Run: `python bench/chaos.py [--kills 20] [--clients 4] [--interval 4]`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import stack  # noqa: F401 - puts the project on sys.path

MODEL = "smollm2:135m"
PROMPTS = ["Name three colours.", "What is the capital of France?", "Count from one to ten.",
           "Say something about the sea.", "What is two plus two?", "Describe a cat in one sentence."]


@dataclass
class Outcome:
    started: float
    ended: float = 0.0
    request_id: str | None = None
    status: int | None = None
    text: str = ""
    final: str = "hung"  # done | error:<code> | http:<status> | broken:<what> | hung
    events: list = field(default_factory=list)


def stream_one(client, prompt: str, timeout: float) -> Outcome:
    import httpx

    outcome = Outcome(started=time.monotonic())
    body = {"model": MODEL, "stream": True, "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": prompt}]}
    try:
        with client.stream("POST", "/chat/completions", json=body, timeout=timeout) as response:
            outcome.status = response.status_code
            outcome.request_id = response.headers.get("X-AIHub-Request-Id")
            if response.status_code != 200:
                response.read()
                try:
                    error = response.json()["error"]
                    outcome.final = f"http:{response.status_code}:{error.get('code')}"
                except (ValueError, KeyError, TypeError):
                    outcome.final = f"broken:http {response.status_code} without the error shape"
                return outcome
            outcome.final = "broken:stream ended without [DONE]"
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    if outcome.final.startswith("broken"):
                        outcome.final = "broken:[DONE] without a final chunk"
                    break
                payload = json.loads(data)
                if "error" in payload:
                    outcome.final = f"error:{payload['error'].get('code')}"
                    continue
                for choice in payload.get("choices", []):
                    outcome.text += choice["delta"].get("content") or ""
                    if choice.get("finish_reason"):
                        outcome.final = "done"
    except httpx.TimeoutException:
        outcome.final = "hung"
    except httpx.HTTPError as exc:
        outcome.final = f"broken:{type(exc).__name__}"
    finally:
        outcome.ended = time.monotonic()
    return outcome


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=4.0, help="seconds between two kills")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    args = parser.parse_args()

    from tests.support.processes import start_hub, start_services

    # `timeout` and Ctrl-C alike: leave through the `finally` below, which stops every process started here.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    run_dir = Path(tempfile.mkdtemp(prefix="aihub-chaos-"))
    servers, env = start_services(run_dir)
    os.environ.update(env)
    processes = supervising = None
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
        call_command("importmodel", builtin=MODEL, verbosity=0)
        from apps.accounts.services import api_key_create, user_get_or_create

        _, raw_key = api_key_create(user=user_get_or_create(username="chaos"))
        (run_dir / "logs").mkdir(exist_ok=True)
        base_url, processes = start_hub(dict(os.environ), run_dir / "logs")
        supervising = supervise(processes)
        report = run_load(args, base_url, raw_key, processes, servers)
        report_rows(report)
    finally:
        if supervising is not None:
            supervising.set()  # before stopping: the processes about to stop must not be started again
            time.sleep(1)
        if processes is not None:
            processes.stop()
        for server in reversed(servers):
            server.stop()
        if not os.environ.get("AIHUB_BENCH_KEEP_RUN_DIR"):
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"run directory kept: {run_dir}")


def supervise(processes) -> threading.Event:
    """Start again a hub process that exits on its own, as `runhub`'s supervisor does: a Celery worker exits
    when it cannot recover from a lost broker connection (the threads-pool inference worker does after a
    Valkey restart: docs/queues.md)."""
    stopped = threading.Event()

    def watch():
        while not stopped.is_set():
            for name, process in list(processes.processes.items()):
                if process.poll() is not None:
                    print(f"  {name} exited ({process.returncode}); starting it again", flush=True)
                    processes.restart(name)
            time.sleep(0.5)

    threading.Thread(target=watch, name="supervisor", daemon=True).start()
    return stopped  # set it to stop supervising


def run_load(args, base_url: str, raw_key: str, processes, servers) -> dict:
    import httpx

    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(index: int):
        with httpx.Client(base_url=f"{base_url}/api/v1", headers={"Authorization": f"Bearer {raw_key}"}) as client:
            turn = index
            while not stop.is_set():
                outcome = stream_one(client, PROMPTS[turn % len(PROMPTS)], args.request_timeout)
                turn += 1
                with lock:
                    outcomes.append(outcome)
                if outcome.final != "done":
                    time.sleep(0.5)  # a client backs off a little after an error, as SDKs do

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(args.clients)]
    for thread in threads:
        thread.start()

    def answered_after(moment: float, timeout: float = 120.0) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with lock:
                done = [o.ended for o in outcomes if o.final == "done" and o.started >= moment]
            if done:
                return min(done) - moment
            time.sleep(0.1)
        return None

    faults = []
    time.sleep(args.interval)
    for number in range(1, args.kills + 1):
        moment = time.monotonic()
        os.kill(processes.processes["inference"].pid, signal.SIGKILL)  # the supervisor starts it again
        recovery = answered_after(moment)
        faults.append((f"kill {number}", recovery))
        print(f"kill {number:2d}/{args.kills}: answered again after "
              f"{'never' if recovery is None else f'{recovery:.1f} s'}", flush=True)
        time.sleep(max(0.0, args.interval - (time.monotonic() - moment)))

    for name, server in (("Valkey", servers[1]), ("PostgreSQL", servers[0])):
        time.sleep(args.interval)
        moment = time.monotonic()
        server.stop()
        time.sleep(1.0)
        server.start()
        recovery = answered_after(moment)
        faults.append((f"{name} restart", recovery))
        print(f"{name} restarted: answered again after "
              f"{'never' if recovery is None else f'{recovery:.1f} s'}", flush=True)

    time.sleep(args.interval)
    stop.set()
    for thread in threads:
        thread.join(args.request_timeout + 10)
    return {"outcomes": outcomes, "faults": faults}


def report_rows(report: dict) -> None:
    from django.db import close_old_connections

    from apps.chat.models import GenerationRequest, Message

    close_old_connections()  # PostgreSQL was restarted under us
    outcomes: list[Outcome] = report["outcomes"]
    ids = [o.request_id for o in outcomes if o.request_id]
    deadline = time.monotonic() + 60
    while GenerationRequest.objects.filter(id__in=ids, state__in=["queued", "running"]).exists():
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    rows = {str(r.id): r for r in GenerationRequest.objects.filter(id__in=ids)}
    answers = Counter(str(g) for g in Message.objects.filter(generation_id__in=ids).values_list(
        "generation_id", flat=True))
    unfinished = [i for i in ids if rows.get(i) is None or not rows[i].is_finished]
    twice = [i for i, n in answers.items() if n > 1]
    mismatched = [o.request_id for o in outcomes if o.final == "done"
                  and (rows.get(o.request_id) is None or rows[o.request_id].completion != o.text)]
    done_but_failed = [o.request_id for o in outcomes if o.final == "done"
                       and rows.get(o.request_id) is not None and rows[o.request_id].state != "succeeded"]
    retried = sum(1 for r in rows.values() if getattr(r, "attempts", 1) > 1 and r.state == "succeeded")
    finals = Counter(o.final for o in outcomes)
    hung = finals.get("hung", 0)
    broken = sum(n for final, n in finals.items() if final.startswith("broken"))
    recoveries = [seconds for _, seconds in report["faults"] if seconds is not None]

    print()
    print(f"requests: {len(outcomes)} ({dict(finals)})")
    print(f"  answered (done)                   {finals.get('done', 0)}")
    print(f"  answered after a transparent retry {retried}")
    print(f"  clear errors (error event / 4xx-5xx in the error shape) "
          f"{sum(n for f, n in finals.items() if f.startswith(('error:', 'http:')))}")
    print(f"  hung (no end in time)             {hung}")
    print(f"  broken (cut stream, no error shape) {broken}")
    print(f"  rows left queued or running       {len(unfinished)}")
    print(f"  answered twice                    {len(twice)}")
    print(f"  streamed text != stored answer    {len(mismatched)}")
    print(f"  done on the wire but not stored as succeeded {len(done_but_failed)}")
    for request_id in done_but_failed:
        row = rows[request_id]
        print(f"    {request_id}: {row.state} {row.finish_reason} {row.error and row.error.get('code')}")
    never = [name for name, seconds in report["faults"] if seconds is None]
    if recoveries:
        print(f"recovery after a fault: median {statistics.median(recoveries):.1f} s, max {max(recoveries):.1f} s"
              f"{'; never after ' + ', '.join(never) if never else ''}")
    for name, seconds in report["faults"]:
        if not name.startswith("kill"):
            print(f"  {name}: {'never' if seconds is None else f'{seconds:.1f} s'}")
    lost = hung + broken + len(unfinished) + len(twice) + len(mismatched) + len(done_but_failed)
    print("RESULT:", "0 requests lost or answered twice" if not lost and not never else f"{lost} defects")


if __name__ == "__main__":
    main()
