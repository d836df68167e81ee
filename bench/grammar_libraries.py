"""Benchmark: which grammar library constrains decoding (docs/models.md, "Structured outputs").

For llguidance and xgrammar, on the default model's tokenizer (SmolLM2, 49152 tokens), it measures
  - compiling a typical JSON schema (cold: a new schema; the tokenizer's one-time preparation apart),
  - the per-token cost of a batch of B constrained rows: filling the token bitmask for every row, masking
    [B, vocab] logits with it, and advancing every row's matcher by the token drawn from the masked logits
    (rows restart when their JSON is complete), for B = 1 and 16.
No model runs here: the logits are random, so the rows walk the grammar as a random model would.
`bench/constrained.py` measures the winner inside the engine. Only the libraries installed are measured
(`pip install xgrammar==0.2.9 llguidance==1.9.1`). Run: `python bench/grammar_libraries.py [--steps 200]`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "maxLength": 40},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                      "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False},
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}


def tokenizer_path() -> Path:
    for candidate in (ROOT / "var/test-models/smollm2-135m",):
        if (candidate / "tokenizer.json").is_file():
            return candidate
    raise SystemExit("needs the default model's tokenizer under var/test-models/smollm2-135m (run the tests once)")


def variant(index: int) -> dict:
    """The schema with a different property name: a cold compile, not a cache hit."""
    schema = json.loads(json.dumps(SCHEMA))
    schema["properties"][f"field_{index}"] = schema["properties"].pop("email")
    return schema


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """The same masking for both libraries (workers/constraints.py does this): bits unpacked on the logits' device."""
    bits = torch.arange(32, device=logits.device, dtype=torch.int32)
    allowed = ((bitmask.to(logits.device, non_blocking=True).unsqueeze(-1) >> bits) & 1).flatten(1)
    logits.masked_fill_(allowed[:, :logits.shape[1]] == 0, float("-inf"))


class Llguidance:
    name = "llguidance"

    def __init__(self, hf_tokenizer, vocab: int):
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab)
        self.executor = llguidance.LLExecutor()

    def compile(self, schema: dict):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        matcher = self.llg.LLMatcher(self.tokenizer, grammar)  # compiles the grammar against the tokenizer
        assert not matcher.is_error(), matcher.get_error()
        return grammar

    def matcher(self, compiled):
        return self.llg.LLMatcher(self.tokenizer, compiled)

    def fill(self, matchers, bitmask):
        import llguidance.torch

        if len(matchers) == 1:
            llguidance.torch.fill_next_token_bitmask(matchers[0], bitmask, 0)
        else:
            llguidance.torch.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(matchers)],
                                                         bitmask)

    def accept(self, matcher, token) -> bool:
        assert matcher.consume_token(token), matcher.get_error()
        return matcher.is_stopped()

    @staticmethod
    def reset(matcher):
        matcher.reset()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, hf_tokenizer, vocab: int):
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab)
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)

    def compile(self, schema: dict):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, matchers, bitmask):
        for index, matcher in enumerate(matchers):
            matcher.fill_next_token_bitmask(bitmask, index)

    def accept(self, matcher, token) -> bool:
        assert matcher.accept_token(token)
        return matcher.is_terminated()

    @staticmethod
    def reset(matcher):
        matcher.reset()


def measure(library, vocab: int, batch: int, steps: int) -> dict:
    compiled = library.compile(SCHEMA)
    matchers = [library.matcher(compiled) for _ in range(batch)]
    bitmask = torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)
    generator = torch.Generator().manual_seed(0)
    fill_s, accept_s, total_s, completed = [], [], [], 0
    for _ in range(steps):
        logits = torch.randn((batch, vocab), generator=generator)
        started = time.perf_counter()
        library.fill(matchers, bitmask)
        filled = time.perf_counter()
        apply_bitmask(logits, bitmask)
        tokens = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1).tolist()
        sampled = time.perf_counter()
        for matcher, token in zip(matchers, tokens):
            if library.accept(matcher, token):
                library.reset(matcher)
                completed += 1
        accept_s.append(time.perf_counter() - sampled)
        total_s.append(time.perf_counter() - started)
        fill_s.append(filled - started)
    # step: fill + mask + draw + accept; the draw (softmax and multinomial over the vocabulary) is the same
    # for both libraries and is what sampling costs anyway.
    return {"fill_ms": 1000 * statistics.median(fill_s), "accept_ms": 1000 * statistics.median(accept_s),
            "step_ms": 1000 * statistics.median(total_s), "completed": completed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    vocab = len(hf_tokenizer)
    torch.set_num_threads(2)
    print(f"tokenizer: SmolLM2 ({vocab} tokens); {torch.get_num_threads()} torch threads")
    print("| library | tokenizer setup | schema compile (cold, median of 5) | B=1 fill / accept / step ms "
          "| B=16 fill / accept / step ms |")
    print("|---|---|---|---|---|")
    for kind in (Llguidance, Xgrammar):
        if importlib.util.find_spec(kind.name) is None:
            print(f"| {kind.name} | not installed |")
            continue
        started = time.perf_counter()
        library = kind(hf_tokenizer, vocab)
        setup = time.perf_counter() - started
        compiles = []
        for index in range(5):
            started = time.perf_counter()
            library.compile(variant(index))
            compiles.append(time.perf_counter() - started)
        one, sixteen = measure(library, vocab, 1, args.steps), measure(library, vocab, 16, args.steps)
        print(f"| {kind.name} | {setup * 1000:.0f} ms | {statistics.median(compiles) * 1000:.1f} ms "
              f"| {one['fill_ms']:.2f} / {one['accept_ms']:.2f} / {one['step_ms']:.2f} "
              f"| {sixteen['fill_ms']:.2f} / {sixteen['accept_ms']:.2f} / {sixteen['step_ms']:.2f} |")


if __name__ == "__main__":
    main()
