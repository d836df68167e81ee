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


CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # CTranslate2's DataType enum order


def ctranslate2_variables(model_bin: Path) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """{name: (shape, dtype, byte offset of its data)} of a CTranslate2 `model.bin`, read from its header only.

    The layout is the one ctranslate2/specs/model_spec.py writes (binary version 6): version, spec name, revision,
    variable count, then per variable its name, rank, dims, dtype id, byte count and data.
    """
    def string(f) -> str:
        (length,) = struct.unpack("<H", f.read(2))
        return f.read(length)[:-1].decode("utf-8")

    variables = {}
    with open(model_bin, "rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        if version < 5:
            raise ValueError(f"{model_bin}: CTranslate2 binary version {version} is too old to read")
        string(f)  # the spec's name
        f.read(4)  # its revision
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = string(f)
            (rank,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack(f"<{rank}I", f.read(4 * rank))
            (dtype, size) = struct.unpack("<BI", f.read(5))
            variables[name] = (shape, CT2_DTYPES[dtype], f.tell())
            f.seek(size, 1)
    return variables


def ctranslate2_parameter_count(model_bin: Path) -> int:
    return sum(prod(shape) for shape, _, _ in ctranslate2_variables(model_bin).values())
