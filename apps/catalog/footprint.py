"""Estimate a model's memory footprint from its files, without loading it (no torch).

Parameters are counted from the safetensors headers (shape of every tensor);
the footprint is parameters x bytes per parameter at the load precision, plus
a fixed share for activations, the KV cache of a typical request and allocator
slack. The worker replaces the estimate with the measured size once loaded.
"""
from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path

BYTES_PER_PARAMETER = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "bnb-8bit": 1.0, "bnb-4bit": 0.5}
OVERHEAD = 1.2  # activations, KV cache for a typical request, allocator slack


NOT_QUANTISED = ("embed", "lm_head", "wte", "wpe", "norm")


def safetensors_parameter_counts(path: Path) -> tuple[int, int]:
    """(all parameters, parameters of the linear layers that bitsandbytes quantises).

    bitsandbytes replaces 2-D linear weights; embeddings, the output head and
    norms stay at the compute precision, which matters for small models.
    """
    total = quantisable = 0
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            count = prod(tensor["shape"])
            total += count
            if len(tensor["shape"]) == 2 and not any(part in name for part in NOT_QUANTISED):
                quantisable += count
    return total, quantisable


def load_precision(*, dtype: str, quantization: str, device_type: str) -> str:
    if quantization in ("bnb-8bit", "bnb-4bit"):
        return quantization
    if dtype == "auto":
        return "float16" if device_type == "cuda" else "float32"
    return dtype


def estimate_bytes(*, parameter_count: int, quantisable_count: int, dtype: str, quantization: str,
                   device_type: str) -> int:
    precision = load_precision(dtype=dtype, quantization=quantization, device_type=device_type)
    if precision not in ("bnb-8bit", "bnb-4bit"):
        return int(parameter_count * BYTES_PER_PARAMETER[precision] * OVERHEAD)
    compute = load_precision(dtype=dtype, quantization="none", device_type=device_type)
    weights = (quantisable_count * BYTES_PER_PARAMETER[precision]
               + (parameter_count - quantisable_count) * BYTES_PER_PARAMETER[compute])
    return int(weights * OVERHEAD)
