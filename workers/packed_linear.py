"""Linear layers on the CPU through oneDNN, with each weight packed once when the model loads.

A decoding step multiplies a few rows (one per running request) by every weight matrix, and a prefill a few
hundred. `nn.Linear` hands both to the MKL in torch's CPU wheels, whose sgemm is weak at few rows. oneDNN,
also in every torch CPU wheel (the library behind torch.compile's CPU linear layers), first reorders a weight
into the blocked layout its kernels read fastest, then multiplies any number of rows against it. One run on
a 2-core AMD EPYC (Zen 4, AVX-512, float32), the default model, one process (docs/models.md):

| | nn.Linear (MKL) | packed (oneDNN) |
|---|---|---|
| output layer alone (576 x 49152), 1 row | 10.4 ms | 5.1 ms |
| output layer alone, 16 rows | 19.3 ms | 5.9 ms |
| a decoding step, 1 row | 58.0 ms | 41.4 ms |
| a decoding step, 16 rows | 110.0 ms | 53.4 ms |
| 16 prompts' prefill (353 tokens) | 611 ms | 510 ms |

This module replaces MKL's few-row product taken transposed, `(weight @ x.T).T`: 1.3-2x faster than the usual
one on an AVX2 EPYC, it took 94.6 ms for the 16-row step above, where oneDNN takes 53.4.

Memory: the packed copy replaces the weight, so a model takes no more than before. A weight that is also
used elsewhere (an output layer tied to the input embeddings) stays, with its packed copy beside it, and
both are counted in the model's size. A replaced `weight` still reads as the plain matrix (unpacked on each
access: peft reads its device and dtype when it wraps the layer for an adapter); nothing in a step reads it.

Whether oneDNN wins depends on the processor, so `auto` times both ways on the model's own largest shapes
when it first loads (tens of milliseconds, once per process and shapes) and packs only where oneDNN is
faster; `on` packs without timing, `off` never. Only plain float32 `nn.Linear` layers on the CPU are packed:
not quantized ones, not a GPU's.

What it gives up: oneDNN sums in another order than MKL, so logits differ at float32 rounding (about 1e-6)
from `nn.Linear`'s, and may depend on how many rows share the step. Greedy answers were unchanged in every
comparison we ran (tests/test_batching.py compares 16 answers word for word, packed and not), but a seeded or
greedy request is reproducible only to that rounding, as on a GPU. `AIHUB_CPU_PACKED_LINEAR=off` restores
`nn.Linear`'s bit-for-bit results whatever shares the batch.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

import torch
from torch import nn
from torch.nn import functional

logger = logging.getLogger(__name__)

PACKED_FOR_ROWS = 16  # oneDNN's layout hint: a typical decoding batch (any number of rows works)
CALIBRATION_ROWS = 8  # a small batch, where MKL is weakest


class PackedLinear(nn.Linear):
    """An nn.Linear whose product runs on its oneDNN-packed weight (`packed`, a buffer). Swapped in by class,
    so peft's LoRA wrapping (it is an nn.Linear) is unchanged."""

    packed: torch.Tensor

    @property
    def weight(self) -> torch.Tensor:
        kept = self._parameters.get("weight")
        return kept if kept is not None else self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def use_packed_linear(model: nn.Module, *, mode: str = "auto") -> bool:
    """Pack `model`'s plain float32 CPU linear layers (PackedLinear) when `mode` is "on", or when it is "auto" and
    oneDNN is faster on the model's largest shapes. True when packed."""
    layers = [module for module in model.modules()
              if type(module) is nn.Linear and module.weight.device.type == "cpu"
              and module.weight.dtype == torch.float32]
    if mode == "off" or not layers or not torch.backends.mkldnn.is_available():
        return False
    if mode == "auto":
        usual, packed = _calibrate(layers)
        if packed >= usual:
            logger.info("linear layers: MKL is as fast here as oneDNN (%.2f against %.2f ms); not packed",
                        usual * 1000, packed * 1000)
            return False
        logger.info("linear layers: oneDNN takes %.2f ms instead of MKL's %.2f for %d rows here; packed",
                    packed * 1000, usual * 1000, CALIBRATION_ROWS)
    # A weight held by another parameter too (tied to the embeddings) must stay as it is.
    holders = Counter(parameter.data_ptr() for _, parameter in model.named_parameters(remove_duplicate=False))
    for module in layers:
        weight = module.weight
        module.register_buffer("packed", _pack(weight), persistent=False)
        module.__class__ = PackedLinear
        if holders[weight.data_ptr()] == 1:
            del module._parameters["weight"]
    return True


def _pack(weight: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_FOR_ROWS)


# (in, out) shapes of the timed layers -> seconds each way: the libraries and the processor do not change
# within a process, and a model unloaded and loaded again (keep-alive, LRU) has the same shapes.
_timings: dict[tuple[tuple[int, int], ...], tuple[float, float]] = {}


def _calibrate(layers: list[nn.Linear]) -> tuple[float, float]:
    """Seconds for CALIBRATION_ROWS rows through the widest layer and the largest other one, each way (best of 3),
    timed once per process for those shapes."""
    by_size = sorted(layers, key=lambda module: module.weight.numel(), reverse=True)
    widest = max(layers, key=lambda module: module.out_features)
    sample = [widest] + [module for module in by_size if module is not widest][:1]
    shapes = tuple((module.in_features, module.out_features) for module in sample)
    if shapes not in _timings:
        _timings[shapes] = _time_both_ways(sample)
    return _timings[shapes]


def _time_both_ways(sample: list[nn.Linear]) -> tuple[float, float]:
    usual = packed = 0.0
    generator = torch.Generator().manual_seed(0)  # its own: loading a model leaves torch's global one as it was
    with torch.inference_mode():
        for module in sample:
            x = torch.randn(CALIBRATION_ROWS, module.in_features, generator=generator)
            weight = _pack(module.weight)
            usual += _best_of(lambda: functional.linear(x, module.weight, module.bias))
            packed += _best_of(lambda: torch.ops.mkldnn._linear_pointwise(x, weight, module.bias, "none", [], ""))
    return usual, packed


def _best_of(run, repeats: int = 3) -> float:
    run()  # warm: the first call pays for allocation
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best
