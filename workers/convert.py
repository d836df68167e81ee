"""Convert a GGUF checkpoint once into a transformers directory (safetensors) in the model store.

Loading GGUF dequantises every tensor (about 20 s for SmolLM2-135M); the
converted directory loads in about a second. A GGUF-loaded model refuses
save_pretrained, so its state dict is copied into a model built from its config.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from tqdm import tqdm


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    with tqdm(total=4, desc=f"Converting {gguf_file.name}", unit="step") as bar:
        bar.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        bar.update()
        bar.set_postfix_str("dequantising weights")
        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                      dtype=torch.float32)
        bar.update()
        bar.set_postfix_str("rebuilding from config")
        model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        bar.update()
        bar.set_postfix_str("writing safetensors")
        model.save_pretrained(tmp_dir, safe_serialization=True)
        tokenizer.save_pretrained(tmp_dir)
        bar.update()
    # Rename last, so a half-written directory is never mistaken for a model.
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp_dir.rename(out_dir)
    return out_dir
