"""Linear layers for a few rows on the CPU: `weight @ x.T` where the BLAS is slow at `x @ weight.T`.

A decoding step multiplies few rows (one per running request, 2 to a few dozen) by every weight matrix.
`nn.Linear` computes `x @ weight.T`, and on this machine's CPU (AMD EPYC, AVX2) the MKL that torch's wheels
carry is far from its best there: measured in one run (2 cores, float32), SmolLM2's output layer (576 x 49152)
takes 40 ms for 4 rows against 13 ms for one, and its MLP matrices run 1.3 to 2.9x slower than the same product
taken the other way round, `(weight @ x.T).T`, which MKL computes as a tall matrix times a few columns. A
whole decoding step of the default model got 2.0x faster at 4 rows, 1.34x at 16 and 1.22x at 32, with the
same tokens out (bench/engines.py, docs/models.md "Few-row products on the CPU").

Whether a BLAS has this weakness depends on the library and the processor, so `auto` measures both ways on
the model's own shapes when it first loads (tens of milliseconds, once per process and shapes) and keeps the
transposed product only where it wins.
It applies to plain float32 `nn.Linear` layers on the CPU (not quantized ones, not a GPU), and only for 2 to
`MAX_ROWS` rows: one row is a matrix-vector product that MKL does well, and from a few hundred rows (a long
prompt's prefill) the two ways are level or the usual one wins.
"""
from __future__ import annotations

import logging
import time

import torch
from torch import nn
from torch.nn import functional

logger = logging.getLogger(__name__)

MAX_ROWS = 128  # measured crossover on this machine: level at 256 rows, the usual product ahead from 512
PAD_ABOVE, PAD_TO = 8, 8  # more rows than PAD_ABOVE are padded to a multiple of PAD_TO (see forward)
CALIBRATION_ROWS = 8  # a typical small batch, where the gap is widest


class FewRowsLinear(nn.Linear):
    """An nn.Linear whose product for 2 to MAX_ROWS rows is taken as `(weight @ x.T).T` (same values, other
    summation order at rounding level). Swapped in by class, so its weights, state dict and peft's LoRA
    wrapping (it is an nn.Linear) stay as they were."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.dim() else 0
        if not 2 <= rows <= MAX_ROWS:
            return functional.linear(x, self.weight, self.bias)
        # Made contiguous: the next layers (norms, attention's reshapes) are slower on a transposed layout than
        # this copy of a few rows costs.
        flat = x.reshape(rows, x.shape[-1])
        if rows > PAD_ABOVE and rows % PAD_TO:
            # MKL's kernels for a column count that is not a multiple of 8 are slow above 8 columns: zero rows
            # up to the next multiple cost less than they save (14 rows: 1.15 ms a product, padded to 16: 0.73).
            flat = torch.cat([flat, flat.new_zeros(PAD_TO - rows % PAD_TO, flat.shape[1])])
        out = torch.mm(self.weight, flat.t()).t()[:rows].contiguous()
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def use_few_rows_linear(model: nn.Module, *, mode: str = "auto") -> bool:
    """Swap `model`'s plain float32 CPU linear layers to FewRowsLinear when `mode` is "on", or when it is "auto"
    and the transposed product is faster on the model's largest shapes. True when swapped."""
    layers = [module for module in model.modules()
              if type(module) is nn.Linear and module.weight.device.type == "cpu"
              and module.weight.dtype == torch.float32]
    if mode == "off" or not layers:
        return False
    if mode == "auto":
        usual, transposed = _calibrate(layers)
        if transposed >= usual:
            logger.info("few-row linear layers: the usual product is as fast here (%.2f against %.2f ms); kept",
                        usual * 1000, transposed * 1000)
            return False
        logger.info("few-row linear layers: %.2f ms instead of %.2f ms for %d rows on this BLAS; swapped",
                    transposed * 1000, usual * 1000, CALIBRATION_ROWS)
    for module in layers:
        module.__class__ = FewRowsLinear
    return True


# (in, out) shapes of the timed layers -> seconds each way: the BLAS and the processor do not change within a
# process, and a model unloaded and loaded again (keep-alive, LRU) has the same shapes.
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
    usual = transposed = 0.0
    generator = torch.Generator().manual_seed(0)  # its own: loading a model leaves torch's global one as it was
    with torch.inference_mode():
        for module in sample:
            x = torch.randn(CALIBRATION_ROWS, module.in_features, generator=generator)
            usual += _best_of(lambda: functional.linear(x, module.weight))
            transposed += _best_of(lambda: torch.mm(module.weight, x.t()).t().contiguous())
    return usual, transposed


def _best_of(run, repeats: int = 3) -> float:
    run()  # warm: the first call pays for allocation
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best
