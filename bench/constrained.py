"""Benchmark: what constrained decoding (response_format) costs per token, inside the batching engine.

In process (no web, queue or database): workers/batching.py's BatchEngine serves the default model
(SmolLM2-135M-Instruct) on this machine's device. The same N prompts run twice, at once in one batch,
greedy: first each with a JSON schema (at most `--tokens` new tokens; a row ends early when its JSON is
complete), then unconstrained with each row held to exactly the number of tokens its constrained run made
(ignore_eos), so that both runs have the same rows in the batch at every step and differ only by the
constraint. It prints decoding tokens/s of both and their ratio (constrained time per token /
unconstrained; the target is at most 1.15x), and checks every constrained answer that ended by its
grammar parses and validates. Run: `python bench/constrained.py [--clients 8]
[--tokens 48] [--rounds 2]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 120},
        "year": {"type": "integer", "minimum": 1800, "maximum": 2100},
        "genre": {"enum": ["drama", "comedy", "documentary", "thriller"]},
        "summary": {"type": "string", "maxLength": 400},
        "cast": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 6},
    },
    "required": ["title", "year", "genre", "summary", "cast"],
    "additionalProperties": False,
}
PROMPTS = [
    "Describe a film about a lighthouse keeper as JSON.",
    "Describe a film about a bicycle race as JSON.",
    "Describe a film about the ocean as JSON.",
    "Describe a film set in your favourite city as JSON.",
]


def load_default_model():
    from workers.engine import load_model, pick_device

    path = ROOT / "var/test-models/smollm2-135m"
    if not (path / "config.json").is_file():
        raise SystemExit(f"needs the default model converted under {path} (run the test suite once)")
    return load_model(model_id="smollm2:135m", path=str(path), context_length=8192, device=pick_device())


def run(engine, loaded, tokens: list[int], constraint: dict | None) -> tuple[float, int, list]:
    """One request per entry of `tokens` (its max_tokens), all at once: seconds from submit to the last
    answer, tokens generated, and the results."""
    from workers.sequence import DONE, FAILED, Sequence

    sequences = [Sequence(request_id=str(i), messages=[{"role": "user", "content": f"{PROMPTS[i % 4]} ({i})"}],
                          params={"max_tokens": count, "temperature": 0, "ignore_eos": True, "constraint": constraint})
                 for i, count in enumerate(tokens)]
    started = time.perf_counter()
    for sequence in sequences:
        engine.submit(loaded, sequence)
    results = []
    for sequence in sequences:
        while True:
            kind, _, value = sequence.outbox.get()  # (kind, choice index, value)
            if kind == FAILED:
                raise RuntimeError(value)
            if kind == DONE:
                results.append(value)
                break
    return time.perf_counter() - started, sum(r.completion_tokens for r in results), results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2, help="measured runs of each kind, interleaved")
    args = parser.parse_args()
    import jsonschema

    from workers.batching import BatchEngine

    loaded = load_default_model()
    engine = BatchEngine(max_batch_size=64, max_batch_tokens=8192, cache_budget=lambda: 8 * 2**30)
    constraint = {"type": "json_schema", "schema": SCHEMA}
    started = time.perf_counter()
    run(engine, loaded, [2], constraint)  # warm-up, and the model's token table and the schema compiled once
    print(f"warm-up with the first constrained request (token table + compile): {time.perf_counter() - started:.2f}s")
    totals = {"plain": [0.0, 0], "constrained": [0.0, 0]}
    stopped = valid = 0
    for _ in range(args.rounds):
        seconds, produced, results = run(engine, loaded, [args.tokens] * args.clients, constraint)
        totals["constrained"][0] += seconds
        totals["constrained"][1] += produced
        for result in results:
            if result.finish_reason == "stop":
                stopped += 1
                jsonschema.validate(json.loads(result.text), SCHEMA)
                valid += 1
        # The same rows for the same number of steps, without the grammar.
        seconds, produced, _ = run(engine, loaded, [r.completion_tokens for r in results], None)
        totals["plain"][0] += seconds
        totals["plain"][1] += produced
    plain, constrained = (totals[k][0] / totals[k][1] for k in ("plain", "constrained"))
    print(f"{args.clients} requests at once, {args.tokens} tokens each, greedy, {args.rounds} round(s); "
          f"device {loaded.device}")
    print(f"unconstrained: {1 / plain:.1f} tok/s ({plain * 1000:.2f} ms/token)")
    print(f"constrained:   {1 / constrained:.1f} tok/s ({constrained * 1000:.2f} ms/token)")
    print(f"ratio (constrained / unconstrained time per token): {constrained / plain:.3f}x")
    print(f"constrained answers that ended by their grammar: {stopped}, all valid: {valid == stopped}")


if __name__ == "__main__":
    main()
    # The engine's thread is a daemon still inside torch: a normal interpreter exit can abort in its teardown.
    sys.stdout.flush()
    os._exit(0)
