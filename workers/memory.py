"""Measured memory of the device a worker owns: nvidia-ml-py and torch on a GPU, psutil on the CPU."""
from __future__ import annotations

import logging
import os

import psutil
import torch

logger = logging.getLogger(__name__)


def resolve_budget(spec: str | float, total_bytes: int) -> int:
    """`AIHUB_GPU_MEMORY_BUDGET`: a fraction (0 < x <= 1) of total memory, or a byte count."""
    value = float(spec)
    if value <= 0:
        raise ValueError(f"memory budget must be positive, got {spec!r}")
    return int(total_bytes * value) if value <= 1 else int(value)


def _nvml_handle(index: int):
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # noqa: BLE001 - no driver, no package: fall back to torch
        return None, None


def device_memory(device: torch.device) -> dict:
    """{"device", "name", "memory_total_bytes", "memory_used_bytes", "process_bytes", "source"}."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        info = {"device": f"cuda:{index}", "name": torch.cuda.get_device_name(index),
                "allocated_bytes": torch.cuda.memory_allocated(index),
                "reserved_bytes": torch.cuda.memory_reserved(index)}
        pynvml, handle = _nvml_handle(index)
        if handle is not None:
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            process_bytes = None
            try:
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == os.getpid():
                        process_bytes = proc.usedGpuMemory
            except pynvml.NVMLError:
                pass
            info.update(memory_total_bytes=memory.total, memory_used_bytes=memory.used,
                        process_bytes=process_bytes or info["reserved_bytes"], source="nvml")
            try:
                info["utilization_percent"] = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                info["temperature_c"] = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
            except pynvml.NVMLError:
                pass
        else:
            free, total = torch.cuda.mem_get_info(index)
            info.update(memory_total_bytes=total, memory_used_bytes=total - free,
                        process_bytes=info["reserved_bytes"], source="torch")
        return info
    memory = psutil.virtual_memory()
    return {"device": "cpu", "name": "cpu", "memory_total_bytes": memory.total,
            "memory_used_bytes": memory.total - memory.available,
            "process_bytes": psutil.Process().memory_info().rss, "source": "psutil",
            "utilization_percent": psutil.cpu_percent(interval=None)}


def module_bytes(model: torch.nn.Module) -> int:
    """Bytes held by a model's parameters and buffers (packed size for quantised weights)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def free_cached(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
