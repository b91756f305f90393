"""The content-addressed cache: entries named by a hash of everything that determines them.

Alignments (``<cache>/aligned/<key>/``), evaluations before the attack
(``before_attack-<key>.json`` beside them) and self-distilled targets (``<cache>/distilled/``) are
stored here. An entry appears by an atomic rename, so a half-written entry is never served, and it
is computed under a lock (``io.exclusive``): concurrent jobs of a parallel sweep that need the same
entry compute it once, the others wait for it and reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sbr_bench.io import exclusive, read_json, write_json_atomic
from sbr_bench.models.adapters import merge_adapter


def digest(payload: Any) -> str:
    """Short stable hash of a JSON-able value."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_identity(model_cfg: dict) -> dict:
    """The model config without the keys that do not change the weights (where files are cached)."""
    return {k: v for k, v in model_cfg.items() if k != "cache_dir"}


def save_weights(model, adapter_kind: str, folder: Path) -> None:
    """``folder/adapter`` (LoRA: the adapter alone) or ``folder/model.safetensors`` (full fine-tuning)."""
    if adapter_kind == "lora":
        model.save_pretrained(folder / "adapter")
    else:
        from safetensors.torch import save_model

        save_model(model, str(folder / "model.safetensors"))


def load_weights(model, adapter_kind: str, folder: Path, merge: bool = True):
    """The model with the weights of ``save_weights`` loaded: a LoRA adapter merged (or, ``merge=False``,
    kept trainable), or the full state dict."""
    if adapter_kind == "lora":
        from peft import PeftModel

        if not merge:  # adapter=continue: the attack trains this adapter
            return PeftModel.from_pretrained(model, folder / "adapter", is_trainable=True)
        return merge_adapter(PeftModel.from_pretrained(model, folder / "adapter"))
    from safetensors.torch import load_model

    load_model(model, str(folder / "model.safetensors"))
    return model


def store(model, adapter_kind: str, entry: Path, meta: dict) -> None:
    """Write the entry into a temporary folder, then rename it into place in one step."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        save_weights(model, adapter_kind, tmp)
        write_json_atomic(tmp / "meta.json", {**meta, "created": time.time()})
        os.replace(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (entry / "meta.json").is_file():
            raise
        # Another job stored the same entry first (same key, same weights): keep theirs.


def cached_json(path: Path, compute) -> Any:
    """``compute()`` once per path (under the cache lock); later calls, and jobs that waited, read it."""
    if not path.is_file():
        with exclusive(path):
            if not path.is_file():
                value = compute()
                write_json_atomic(path, value)
                return value
    return read_json(path)
