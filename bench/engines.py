"""Benchmark: the hub's batching engine against transformers' continuous batching, in one process (issue #11).

Both serve the default model (SmolLM2-135M-Instruct, converted from its package) on this machine's device;
N requests arrive at once, greedy, exactly `--tokens` new tokens each, streamed. For each N it prints
output tokens/s and time to first token p50 of
  (a) workers/batching.py's BatchEngine (left-padded dynamic batch, admitted at token boundaries), and
  (b) transformers' ContinuousBatchingManager (`init_continuous_batching`, paged KV cache: the engine behind
      `transformers serve --continuous-batching`),
and their ratio, and the forward passes our engine made in the level's last round (of which mixed: passes
that decoded running rows and computed prompt tokens together). With `--gap-ms` the requests are submitted
that far apart, as they reach a worker through the hub, so each prompt meets a running batch. No web, queue
or database: what the engine alone costs. docs/models.md says what was kept and why.
Run: `python bench/engines.py [--clients 1,4,16] [--tokens 48] [--gap-ms 0]`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "List some facts about the ocean.",
    "Describe your favourite city and why.",
]


def messages(index: int) -> list[dict]:
    return [{"role": "user", "content": f"{PROMPTS[index % len(PROMPTS)]} ({index})"}]


def ours(loaded, clients: int, tokens: int, gap: float) -> tuple[float, list[float]]:
    from workers.batching import BatchEngine
    from workers.sequence import DONE, FAILED, TEXT, Sequence

    engine = ours.engine = getattr(ours, "engine", None) or BatchEngine(
        max_batch_size=64, max_batch_tokens=4096, cache_budget=lambda: 8 * 2**30)
    sequences = [Sequence(request_id=str(i), messages=messages(i),
                          params={"max_tokens": tokens, "temperature": 0, "ignore_eos": True})
                 for i in range(clients)]
    before = engine.stats()
    started = time.perf_counter()
    first, produced, submitted = {}, 0, 0
    pending = set(range(clients))
    while pending:  # poll every outbox, so a first token is timed when it comes, whoever it belongs to
        while submitted < clients and time.perf_counter() - started >= submitted * gap:
            engine.submit(loaded, sequences[submitted])
            submitted += 1
        for index in list(pending):
            while not sequences[index].outbox.empty():
                kind, _, value = sequences[index].outbox.get()
                first.setdefault(index, time.perf_counter() - started - index * gap)
                if kind == FAILED:
                    raise RuntimeError(value)
                if kind == DONE:
                    produced += value.completion_tokens
                    pending.discard(index)
                assert kind in (TEXT, DONE)
        time.sleep(0.001)
    after = engine.stats()
    ours.passes = after["steps"] - before["steps"]
    ours.mixed = after["mixed_steps"] - before["mixed_steps"]
    return produced / (time.perf_counter() - started), list(first.values())


def theirs(loaded, clients: int, tokens: int, gap: float) -> tuple[float, list[float]]:
    from transformers import GenerationConfig

    manager = getattr(theirs, "manager", None)
    if manager is None:
        config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=-1)
        manager = theirs.manager = loaded.model.init_continuous_batching(generation_config=config)
        manager.start()
    ids = [loaded.tokenizer.apply_chat_template(messages(i), add_generation_prompt=True, return_dict=True)[
        "input_ids"] for i in range(clients)]
    started = time.perf_counter()
    first, produced, done, submitted, waited = {}, 0, 0, 0, 0.0
    while done < clients:
        while submitted < clients and time.perf_counter() - started >= submitted * gap:
            manager.add_request(ids[submitted], request_id=f"{started}-{submitted}", max_new_tokens=tokens,
                                streaming=True)
            submitted += 1
        result = manager.get_result(timeout=gap if submitted < clients else 60)
        if result is None:
            waited = waited + gap if submitted < clients else 60
            if waited >= 60:
                raise RuntimeError("transformers' manager stopped answering")
            continue
        waited = 0.0
        index = int(result.request_id.rsplit("-", 1)[1])
        first.setdefault(result.request_id, time.perf_counter() - started - index * gap)
        if result.is_finished():
            produced += len(result.generated_tokens)
            done += 1
    return produced / (time.perf_counter() - started), list(first.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds per level (after one warm-up)")
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="submit the requests this far apart instead of all at once (through the hub they "
                             "arrive spread out, and each arrival's prompt meets a running batch)")
    args = parser.parse_args()

    # load_model reads the hub's settings (AIHUB_CPU_PACKED_LINEAR); no database is used.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aihub_project.settings")
    import django

    django.setup()
    from apps.catalog.builtin import BUILTIN_MODELS
    from workers.convert import convert_gguf
    from workers.engine import load_model, pick_device

    with tempfile.TemporaryDirectory() as scratch:
        path = convert_gguf(BUILTIN_MODELS["smollm2:135m"].locate(), Path(scratch) / "smollm2")
        device = pick_device()
        # Two loads: transformers' manager switches the attention of the model it is given to its paged kind.
        mine = load_model(model_id="smollm2:135m", path=str(path), context_length=2048, device=device)
        peer = load_model(model_id="smollm2:135m", path=str(path), context_length=2048, device=device)
        print(f"smollm2:135m on {device}, {args.tokens} tokens each, greedy; {args.rounds} rounds per level")
        print(f"{'clients':>7}  {'ours tok/s':>10}  {'theirs tok/s':>12}  {'ratio':>6}  "
              f"{'ours TTFT p50':>13}  {'theirs TTFT p50':>15}  {'ours passes (mixed)':>19}")
        for clients in (int(c) for c in args.clients.split(",")):
            figures = {"ours": ([], []), "theirs": ([], [])}
            for round_number in range(args.rounds + 1):
                # Alternate, so a busy moment of the machine touches both alike.
                for name, run, loaded in (("ours", ours, mine), ("theirs", theirs, peer)):
                    rate, ttfts = run(loaded, clients, args.tokens, args.gap_ms / 1000)
                    if round_number:  # the first round warms up
                        figures[name][0].append(rate)
                        figures[name][1].extend(ttfts)
            rate = {name: statistics.median(values[0]) for name, values in figures.items()}
            ttft = {name: statistics.median(values[1]) * 1000 for name, values in figures.items()}
            print(f"{clients:>7}  {rate['ours']:>10.1f}  {rate['theirs']:>12.1f}  "
                  f"{rate['ours'] / rate['theirs']:>5.2f}x  {ttft['ours']:>10.0f} ms  {ttft['theirs']:>12.0f} ms  "
                  f"{f'{ours.passes} ({ours.mixed})':>19}")
        theirs.manager.stop(block=True)


if __name__ == "__main__":
    main()
