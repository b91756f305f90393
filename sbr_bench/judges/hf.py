"""What the model-based judges (BeaverDam, Llama Guard) share: device, dtype, and a cheap model check.

The checks run in ``Judge.check()``, before the benchmark loads the model under test: a judge
pointed at a folder that does not exist, or at a GPU this machine does not have, fails in seconds.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path

import torch

from sbr_bench.errors import ConfigError
from sbr_bench.judges.base import Judge, Verdict
from sbr_bench.schema import looks_like_path

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_settings(option: str, model: str, device: str) -> None:
    """One ConfigError line when the judge's model folder or device cannot be had (types: its schema)."""
    if not model:
        raise ConfigError(f"judge={option} needs judge.model: a hub id or a local folder")
    if looks_like_path(model) and not Path(model).expanduser().is_dir():
        raise ConfigError(f"judge.model={model}: no such folder; give a local copy of the judge or its hub id")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"judge.device={device} but this machine has no CUDA device; use judge.device=auto or cpu")


def resolve_device(device: str) -> torch.device:
    """``auto``: the GPU when there is one (a 7-8B judge on a CPU takes hours), else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU (how the 7-8B judges are usually run), float32 on a CPU."""
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_source(model: str) -> str:
    """The argument for ``from_pretrained``: an expanded local folder, or the hub id as given."""
    return str(Path(model).expanduser()) if looks_like_path(model) else model


class ModelJudge(Judge):
    """A judge that is a transformers model: where it comes from, where it runs, loaded on first use.

    Subclasses set ``option`` (the conf/judge file's name, for error lines) and implement ``load``
    (filling ``_model`` / ``_tokenizer`` once) and ``score`` (the verdicts of one pass).

    The weights are held for one pass only: ``judge()`` loads them, scores, and releases them, so a
    7-8B judge does not sit in GPU memory while the model under test trains (HarmBench and
    TamperBench keep generation and classification apart likewise). The price is one load per
    evaluation pass (two per job, more with ``eval.during_attack``); ``keep_loaded=True`` keeps them.
    """

    option = "model"

    def __init__(self, model: str, name: str, batch_size: int, device: str, dtype: str, keep_loaded: bool = False):
        self.model_source = model
        self.name = name
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.keep_loaded = keep_loaded
        self._model = None
        self._tokenizer = None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        raise NotImplementedError

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        """The verdicts of one pass; the weights are released after it unless ``keep_loaded``."""
        try:
            return self.score(prompts, responses) if responses else []
        finally:
            if not self.keep_loaded:
                self.release()

    def release(self) -> None:
        """Drop the weights (and the tokenizer); the next pass loads them again."""
        if self._model is None:
            return
        on_cuda = any(p.is_cuda for p in self._model.parameters())
        self._model = self._tokenizer = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()

    def check(self) -> None:
        check_model_settings(self.option, self.model_source, self.device)

    def placement(self) -> tuple[str, torch.device, torch.dtype]:
        """(``from_pretrained`` source, device, dtype) from the settings."""
        device = resolve_device(self.device)
        return load_source(self.model_source), device, resolve_dtype(self.dtype, device)
