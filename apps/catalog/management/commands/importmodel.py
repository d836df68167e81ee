from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.catalog.builtin import BUILTIN_MODELS
from apps.catalog.models import Dtype, ModelKind, ModelSource, Quantization
from apps.catalog.services import model_register
from apps.core.errors import AppError


class Command(BaseCommand):
    help = ("Register a model in the catalog: a built-in one (--builtin smollm2:135m), a GGUF file "
            "(converted once to safetensors in the model store), a transformers directory, or a Hugging Face "
            "id already in the local cache (nothing is downloaded).")

    def add_arguments(self, parser):
        parser.add_argument("model_id", nargs="?", help="Catalog id, e.g. mymodel:1b")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--builtin", choices=sorted(BUILTIN_MODELS))
        source.add_argument("--gguf", type=Path, help="A .gguf file")
        source.add_argument("--directory", type=Path, help="A transformers model directory")
        source.add_argument("--hub-id", help="A Hugging Face id resolved through the local cache (HF_HOME)")
        parser.add_argument("--kind", default=ModelKind.CHAT, choices=ModelKind.values)
        parser.add_argument("--dtype", default=Dtype.AUTO, choices=Dtype.values)
        parser.add_argument("--quantization", default=Quantization.NONE, choices=Quantization.values)
        parser.add_argument("--context-length", type=int)
        parser.add_argument("--force", action="store_true", help="Convert again even if converted before.")
        parser.add_argument("--supports-dimensions", action="store_true",
                            help="An embedding model trained for truncation (Matryoshka): requests may ask for "
                                 "fewer `dimensions`.")

    def handle(self, *args, model_id, builtin, gguf, directory, hub_id, kind, dtype, quantization, context_length,
               force, supports_dimensions, **options):
        if builtin:
            spec = BUILTIN_MODELS[builtin]
            model_id = model_id or spec.model_id
            kind, context_length = spec.kind, context_length or spec.context_length
            try:
                located = spec.locate()
            except FileNotFoundError as exc:
                raise CommandError(str(exc))
            if located.is_dir():
                directory = located  # already in transformers format: served from the package directory
            else:
                gguf = located
        if not model_id:
            raise CommandError("Give the model id, e.g. `importmodel mymodel:1b --gguf file.gguf`.")
        source, source_ref = ModelSource.DIRECTORY, ""
        if hub_id:
            directory, source, source_ref = self._from_hub_cache(hub_id), ModelSource.HUB_CACHE, hub_id
        options = {"kind": kind, "context_length": context_length, "dtype": dtype, "quantization": quantization,
                   "supports_dimensions": supports_dimensions}
        try:
            if gguf:
                entry = self._import_gguf(model_id, gguf, force, options)
            else:
                entry = model_register(model_id=model_id, path=directory, source=source, source_ref=source_ref,
                                       **options)
        except AppError as exc:
            raise CommandError(exc.message)
        vectors = (f", {entry.embedding_dimensions} dimensions, {entry.pooling} pooling"
                   if entry.kind == ModelKind.EMBEDDING else "")
        self.stdout.write(self.style.SUCCESS(
            f"{entry.id}: {entry.kind}, {entry.context_length} tokens{vectors}, {entry.size_bytes / 1e6:.0f} MB "
            f"at {entry.path}"))

    def _from_hub_cache(self, hub_id: str) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(hub_id, local_files_only=True))
        except LocalEntryNotFoundError:
            raise CommandError(f"{hub_id} is not in the local Hugging Face cache; the hub never downloads at run "
                               f"time. Copy the model into the cache (HF_HOME) or use --directory.")

    def _import_gguf(self, model_id, gguf: Path, force, options):
        if not gguf.is_file():
            raise CommandError(f"{gguf} is not a file.")
        out_dir = Path(settings.AIHUB_MODEL_STORE) / model_id.replace(":", "-").replace("/", "--")
        if force or not (out_dir / "config.json").is_file():
            from workers.convert import convert_gguf  # torch is imported only when converting

            out_dir.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(gguf, out_dir)
        else:
            self.stderr.write(f"{model_id}: already converted at {out_dir} (--force converts again)")
        return model_register(model_id=model_id, path=out_dir, source=ModelSource.GGUF, source_ref=str(gguf),
                              **options)
