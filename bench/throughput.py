"""Benchmark (issue #11): many streaming clients at once, the hub against `transformers serve --continuous-batching`.

For each number of concurrent clients (`--clients 1,4,16`), each client streams
`--requests-per-client` chat completions back to back, greedy, exactly
`--tokens` output tokens each, every prompt different (nothing can be answered
from a cache; the hub's response cache is also turned off with `"cache": false`).
Two targets, measured one after the other at each level (hub 1, peer 1, hub 4,
peer 4, ...) so that a busy moment of the machine shifts both:
  (a) the hub end to end: SSE on `POST /api/v1/chat/completions` -> daphne ->
      Redis queue -> Celery worker -> event log -> client (embedded PostgreSQL
      and Valkey in a temporary directory, real daphne and Celery processes);
  (b) the peer: `transformers serve --continuous-batching` of the same
      transformers version, on the CPU in float32 as the hub's worker, serving
      the same converted model directory (the catalog's `smollm2:135m`). It is
      installed in its own virtualenv, `--peer-venv` (var/bench/peer-venv),
      made on the first run and reused afterwards.
Before the first level each target answers two requests that are not counted
(its model load, the peer's lazy set-up of its batching).

Per (target, clients):
- output tokens/s: all completion tokens of the level over its wall time (first
  request sent to last stream closed). Tokens are counted exactly by the
  server's own usage figure at the end of each stream (the hub's
  `stream_options.include_usage`; the peer always sends it): the hub must give
  exactly `--tokens`, the peer's tokens are counted as received.
- TTFT p50 / p95: request sent -> first content (a non-empty `delta.content`).
- ITL p50: the median gap between consecutive content chunks, pooled over the
  level's requests. A chunk here is what one network read brings. It may
  carry several tokens (the peer writes all that is ready at once), and a
  token may bring no text (the peer's decoder drops special tokens, which
  greedy decoding past the end of the answer produces); `tok/chunk`, tokens
  over content chunks, shows both. TPOT p50 is a per-token figure that
  neither changes: per request, (stream closed - first content) / (tokens - 1),
  median over requests.
- E2E p50: request sent -> stream closed, per request.
- rival: the share of the machine's CPUs that the other target's servers used
  while this one was measured. The peer's server keeps part of a core busy
  even when idle (its batching loop polls: about a quarter of a core measured
  here), so it is paused (SIGSTOP, then SIGCONT) while the hub is measured; the
  hub is not paused (its workers must keep their heartbeats), and this column
  shows what its idle processes took from the peer.
- others: the share of the machine's CPUs that processes outside the
  benchmark (its servers included in it) used during the level; on a shared
  machine a level where it is high is not to be trusted.
Then the ratios and the issue's targets: at 16 clients hub tok/s >= 1.2x the
peer's and >= 4x the hub's at 1 client, hub TTFT p50 <= 1.5x the peer's; at 1
client hub TTFT p50 <= 1.25x the peer's.

How the peer makes exactly N tokens: it has no `ignore_eos`, but it takes a
`generation_config` (a JSON string); `eos_token_id: -1` there means no
end-of-sequence token to its continuous batching, and `max_tokens` stops it.

Run: `make bench-throughput` or `python bench/throughput.py [--clients 1,4,16]
[--tokens 48] [--requests-per-client 3] [--json PATH]`. The peer's first
install takes about a minute (torch's CPU wheel is local); the benchmark then
takes 10 to 17 minutes on 2 cores, most of it the hub at 16 clients while it
serves one request at a time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import psutil

from stack import ROOT, django_on_embedded_services

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "List some facts about the ocean.",
    "Describe your favourite city and why.",
    "Give advice to someone learning to cook.",
    "Explain why the sky is blue.",
    "Write a letter to a friend about a trip to the mountains.",
    "Describe how bread is made.",
]
TARGETS = {"tok/s at 16 clients, hub / peer": (">=", 1.2), "hub tok/s 16 / 1 clients": (">=", 4.0),
           "TTFT p50 at 16 clients, hub / peer": ("<=", 1.5), "TTFT p50 at 1 client, hub / peer": ("<=", 1.25)}


@dataclass
class Target:
    name: str
    url: str
    headers: dict
    body: Callable[[str], dict]


@dataclass
class Stream:
    started: float
    chunks: list[float]  # arrival time of each network read that carried content
    finished: float
    tokens: int


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    values = sorted(values)
    position = (len(values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by the whole machine and by this benchmark's processes (servers included)."""
    machine = psutil.cpu_times()
    ours = 0.0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        ours += times.user + times.system
    return machine.user + machine.nice + machine.system + machine.irq + machine.softirq, ours


def others_cpu_share(before: tuple[float, float], after: tuple[float, float], wall: float) -> float:
    """The share of the machine's CPUs that processes outside the benchmark used: a level it is high for is suspect."""
    machine, ours = after[0] - before[0], after[1] - before[1]
    return max(0.0, machine - ours) / (wall * psutil.cpu_count())


def group_cpu_seconds(group) -> float:
    """CPU seconds used so far by the processes of a ProcessGroup and their children."""
    total = 0.0
    for popen in group.processes.values():
        try:
            process = psutil.Process(popen.pid)
            for one in [process, *process.children(recursive=True)]:
                times = one.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


@contextmanager
def paused(group):
    """Every process group of `group` stopped (SIGSTOP) for the block, continued after."""
    for popen in group.processes.values():
        os.killpg(popen.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for popen in group.processes.values():
            os.killpg(popen.pid, signal.SIGCONT)


def peer_cli(venv: Path) -> Path:
    """`transformers` of the peer's virtualenv; made, or completed, here with our torch and transformers versions."""
    python = venv / "bin" / "python"
    transformers = version("transformers")
    if not python.exists():
        print(f"Creating the peer's virtualenv {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    check = f"import fastapi, torch, transformers; assert transformers.__version__ == {transformers!r}"
    if subprocess.run([python, "-c", check], capture_output=True).returncode != 0:
        # torch's version without its local label (+cpu): pip takes the CPU wheel found locally.
        torch = version("torch").split("+")[0]
        print(f"Installing torch=={torch} and transformers[serving]=={transformers} into {venv} ...", flush=True)
        subprocess.run([python, "-m", "pip", "install", "--progress-bar", "on", f"torch=={torch}",
                        f"transformers[serving]=={transformers}"], check=True)
    return venv / "bin" / "transformers"


def start_peer(cli: Path, model_dir: str, log_dir: Path):
    """`transformers serve` on a free port, in its own process group; returns its base URL once /health says 200."""
    from aihub_project.embedded import free_port
    from tests.support.processes import ProcessGroup

    port = free_port()
    processes = ProcessGroup({**os.environ, "HF_HUB_OFFLINE": "1"}, log_dir)
    process = processes.start("peer", [str(cli), "serve", model_dir, "--continuous-batching", "--device", "cpu",
                                       "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)])
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            processes.stop()
            raise RuntimeError(f"the peer exited with {process.returncode}:\n{processes.log('peer')[-3000:]}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return base_url, processes
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            processes.stop()
            raise RuntimeError(f"the peer was not ready in 300 s:\n{processes.log('peer')[-3000:]}")
        time.sleep(0.5)


def hub_target(base_url: str, key: str, model: str, tokens: int) -> Target:
    def body(prompt: str) -> dict:
        return {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": tokens, "temperature": 0,
                "ignore_eos": True, "cache": False}

    return Target("hub", f"{base_url}/api/v1/chat/completions", {"Authorization": f"Bearer {key}"}, body)


def peer_target(base_url: str, model_dir: str, tokens: int) -> Target:
    def body(prompt: str) -> dict:
        return {"model": model_dir, "messages": [{"role": "user", "content": prompt}], "stream": True,
                "max_tokens": tokens, "temperature": 0,
                "generation_config": json.dumps({"do_sample": False, "eos_token_id": -1})}

    return Target("peer", f"{base_url}/v1/chat/completions", {}, body)


async def stream_one(client: httpx.AsyncClient, target: Target, prompt: str) -> Stream:
    started, chunks, tokens, buffer = time.perf_counter(), [], None, b""
    async with client.stream("POST", target.url, json=target.body(prompt), headers=target.headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{target.name}: {response.status_code} {(await response.aread()).decode()}")
        async for data in response.aiter_bytes():
            arrived = time.perf_counter()
            *events, buffer = (buffer + data).split(b"\n\n")
            payloads = [json.loads(event[len(b"data: "):]) for event in events if event.startswith(b"data: {")]
            for payload in payloads:
                if "error" in payload:
                    raise RuntimeError(f"{target.name}: {payload['error']}")
                tokens = payload["usage"]["completion_tokens"] if payload.get("usage") else tokens
            if any(choice["delta"].get("content") for payload in payloads for choice in payload["choices"]):
                chunks.append(arrived)
    if tokens is None or not chunks:
        raise RuntimeError(f"{target.name}: a stream ended without content or usage")
    return Stream(started, chunks, time.perf_counter(), tokens)


async def run_level(target: Target, prompts: list[list[str]]) -> tuple[list[Stream], float]:
    """Every client streams its prompts back to back; returns all streams and the level's wall time."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(900, connect=30)) as client:
        async def one_client(mine: list[str]) -> list[Stream]:
            return [await stream_one(client, target, prompt) for prompt in mine]

        started = time.perf_counter()
        per_client = await asyncio.gather(*(one_client(mine) for mine in prompts))
        return [stream for streams in per_client for stream in streams], time.perf_counter() - started


def level_prompts(clients: int, per_client: int) -> list[list[str]]:
    """Different prompts for every request of the level; the marker comes first, so no two share a prefix."""
    return [[f"Request {client + 1}.{n + 1} of {clients} clients: "
             f"{PROMPTS[(client * per_client + n) % len(PROMPTS)]}" for n in range(per_client)]
            for client in range(clients)]


def summarise(streams: list[Stream], wall: float, expected_tokens: int | None) -> dict:
    if expected_tokens is not None:
        assert all(stream.tokens == expected_tokens for stream in streams), [stream.tokens for stream in streams]
    tokens = sum(stream.tokens for stream in streams)
    ttft = [stream.chunks[0] - stream.started for stream in streams]
    gaps = [later - earlier for stream in streams for earlier, later in zip(stream.chunks, stream.chunks[1:])]
    tpot = [(stream.finished - stream.chunks[0]) / (stream.tokens - 1) for stream in streams]
    return {"requests": len(streams), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
            "itl_p50_s": percentile(gaps, 50) if gaps else None, "tpot_p50_s": percentile(tpot, 50),
            "e2e_p50_s": percentile([stream.finished - stream.started for stream in streams], 50),
            "tokens_per_chunk": tokens / sum(len(stream.chunks) for stream in streams)}


def ratios(figures: dict, levels: list[int]) -> dict:
    hub, peer = figures["hub"], figures["peer"]
    most, fewest = levels[-1], levels[0]
    out = {f"tok/s at {level} clients, hub / peer": hub[level]["tokens_per_s"] / peer[level]["tokens_per_s"]
           for level in levels}
    out[f"hub tok/s {most} / {fewest} clients"] = hub[most]["tokens_per_s"] / hub[fewest]["tokens_per_s"]
    out[f"TTFT p50 at {most} clients, hub / peer"] = hub[most]["ttft_p50_s"] / peer[most]["ttft_p50_s"]
    out[f"TTFT p50 at {fewest} client{'s' if fewest > 1 else ''}, hub / peer"] = (
        hub[fewest]["ttft_p50_s"] / peer[fewest]["ttft_p50_s"])
    return out


def ms(seconds: float | None) -> str:
    return f"{seconds * 1000:8.0f} ms" if seconds is not None else f"{'-':>11}"


def report(figures: dict, levels: list[int], found: dict) -> None:
    print(f"{'target':<6} {'clients':>7} {'tok/s':>7} {'TTFT p50':>11} {'TTFT p95':>11} {'ITL p50':>11} "
          f"{'TPOT p50':>11} {'E2E p50':>11} {'tok/chunk':>9} {'tokens':>6} {'rival':>6} {'others':>6}")
    for level in levels:
        for name in ("hub", "peer"):
            f = figures[name][level]
            print(f"{name:<6} {level:>7} {f['tokens_per_s']:7.1f} {ms(f['ttft_p50_s'])} {ms(f['ttft_p95_s'])} "
                  f"{ms(f['itl_p50_s'])} {ms(f['tpot_p50_s'])} {ms(f['e2e_p50_s'])} {f['tokens_per_chunk']:9.2f} "
                  f"{f['tokens']:>6} {f['rival_cpu_share']:6.0%} {f['others_cpu_share']:6.0%}")
    print("ratios (issue #11's targets on the right):")
    for name, value in found.items():
        if name not in TARGETS:
            print(f"  {name:<40} {value:6.2f}x")
            continue
        sign, target = TARGETS[name]
        met = value >= target if sign == ">=" else value <= target
        print(f"  {name:<40} {value:6.2f}x   target {sign} {target}x: {'met' if met else 'NOT met'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,16", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--peer-venv", type=Path, default=ROOT / "var" / "bench" / "peer-venv")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    levels = sorted(int(n) for n in args.clients.split(","))

    began = time.monotonic()
    cli = peer_cli(args.peer_venv)
    figures = {"hub": {}, "peer": {}}
    with django_on_embedded_services() as run_dir:
        from apps.accounts.services import api_key_create, user_get_or_create
        from apps.catalog.models import ModelEntry
        from tests.support.processes import start_hub

        entry = ModelEntry.objects.get(id="smollm2:135m")
        _, key = api_key_create(user=user_get_or_create(username="bench"))
        measuring = time.monotonic()
        hub_url, hub_processes = start_hub(dict(os.environ), run_dir / "logs")
        try:
            peer_url, peer_processes = start_peer(cli, entry.path, run_dir / "logs")
        except Exception:
            hub_processes.stop()
            raise
        try:
            targets = [hub_target(hub_url, key, entry.id, args.tokens), peer_target(peer_url, entry.path, args.tokens)]
            for target in targets:
                asyncio.run(run_level(target, [[f"Warm-up {n}: {PROMPTS[n]}" for n in range(2)]]))
            for level in levels:
                prompts = level_prompts(level, args.requests_per_client)
                for target in targets:
                    rival = peer_processes if target.name == "hub" else hub_processes
                    with paused(peer_processes) if target.name == "hub" else nullcontext():
                        before, rival_before = cpu_seconds(), group_cpu_seconds(rival)
                        streams, wall = asyncio.run(run_level(target, prompts))
                        others = others_cpu_share(before, cpu_seconds(), wall)
                        rival_share = (group_cpu_seconds(rival) - rival_before) / (wall * psutil.cpu_count())
                    expected = args.tokens if target.name == "hub" else None
                    figures[target.name][level] = {**summarise(streams, wall, expected), "others_cpu_share": others,
                                                   "rival_cpu_share": rival_share}
                    print(f"  {target.name} at {level} clients: {figures[target.name][level]['tokens_per_s']:.1f} "
                          f"tok/s in {wall:.0f} s; other processes used {others:.0%} of the CPUs", flush=True)
        finally:
            peer_processes.stop()
            hub_processes.stop()
        measured_s = time.monotonic() - measuring

    found = ratios(figures, levels)
    print(f"model {entry.id} ({entry.path}), {args.tokens} tokens, greedy, {args.requests_per_client} requests per "
          f"client, peer: transformers serve --continuous-batching (transformers {version('transformers')}, CPU, "
          f"float32)")
    report(figures, levels, found)
    total_s = time.monotonic() - began
    print(f"took {total_s:.0f} s in all, {measured_s:.0f} s from starting the servers to the end")
    if args.json:
        args.json.write_text(json.dumps({
            "model": entry.id, "model_dir": entry.path, "tokens": args.tokens,
            "requests_per_client": args.requests_per_client, "peer_transformers": version("transformers"),
            "figures": figures, "ratios": found, "targets": TARGETS, "took_s": total_s}, indent=2) + "\n")


if __name__ == "__main__":
    main()
