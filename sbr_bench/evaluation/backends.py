"""Where the evaluation's greedy answers come from: ``eval.backend`` (``conf/eval/default.yaml``).

- ``hf``: ``model.generate`` on length-sorted static batches (``generate.generate_answers``);
- ``continuous``: transformers' continuous batching (``model.generate_batch``): a request leaves the
  running batch when it ends and the next one takes its place, over a paged KV cache;
- ``vllm``: vLLM in a separate process (``vllm_worker.py``) on a checkpoint written for it.

A backend answers a list of ``Request`` s at once (the evaluation's three pools, each with its own
new-token limit), so that vLLM starts once per evaluation, not once per pool. Every backend sees the
same token ids (the chat template applied, no special tokens added) and returns, per request,
(answers, truncated flags) in input order: a record is the same whatever produced it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from sbr_bench.errors import ConfigError
from sbr_bench.evaluation.generate import decode_answer, encode_prompts, generate_answers

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("vllm_worker.py")
Answers = tuple[list[str], list[bool]]


@dataclass(frozen=True)
class Request:
    """Prompts answered with one new-token limit; ``desc`` names them in progress bars and logs."""

    prompts: Sequence[str]
    max_new_tokens: int
    desc: str = "generate"


class Backend(Protocol):
    def check(self) -> None:
        """Raise ConfigError when the backend cannot run here (called before any model loads)."""

    def __call__(self, model, tokenizer, requests: Sequence[Request]) -> list[Answers]: ...


@dataclass(frozen=True)
class HFBackend:
    """Static batches of ``batch_size`` prompts, sorted by length, left-padded, KV-cached."""

    batch_size: int = 32

    def check(self) -> None:
        pass

    def __call__(self, model, tokenizer, requests: Sequence[Request]) -> list[Answers]:
        return [
            generate_answers(model, tokenizer, r.prompts, r.max_new_tokens, self.batch_size, r.desc) for r in requests
        ]


@dataclass(frozen=True)
class ContinuousBackend:
    """transformers' continuous batching; the cache holds every prompt at full length unless ``num_blocks``."""

    page_size: int = 128
    max_batch_tokens: int = 2048
    num_blocks: int | None = None

    def check(self) -> None:
        pass  # transformers' own code: nothing to install

    def blocks(self, ids: Sequence[Sequence[int]], max_new_tokens: int) -> int:
        """Cache blocks for every request at its longest (prompt + new tokens), rounded up per request."""
        if self.num_blocks is not None:
            return self.num_blocks
        return sum(math.ceil((len(i) + max_new_tokens) / self.page_size) for i in ids)

    def __call__(self, model, tokenizer, requests: Sequence[Request]) -> list[Answers]:
        return [self._one(model, tokenizer, r) for r in requests]

    @torch.no_grad()
    def _one(self, model, tokenizer, request: Request) -> Answers:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        ids = encode_prompts(tokenizer, request.prompts)
        if not ids:
            return [], []
        generation = GenerationConfig(
            max_new_tokens=request.max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        batching = ContinuousBatchingConfig(
            page_size=self.page_size,
            max_batch_tokens=self.max_batch_tokens,
            num_blocks=self.blocks(ids, request.max_new_tokens),
        )
        was_training = model.training
        model.eval()
        try:
            outputs = list(
                model.generate_batch(
                    ids, generation_config=generation, continuous_batching_config=batching, progress_bar=True
                ).values()
            )
        finally:
            model.train(was_training)
        # generate_batch logs a failed request and returns without it: a missing answer is an error here.
        failed = [o.request_id for o in outputs if o.error is not None]
        if len(outputs) != len(ids) or failed:
            raise RuntimeError(
                f"continuous batching answered {len(outputs) - len(failed)} of {len(ids)} {request.desc} "
                "(transformers logged the reason above)"
            )
        if any(list(o.prompt_ids) != list(i) for o, i in zip(outputs, ids, strict=True)):
            raise RuntimeError("continuous batching returned its answers out of order")
        decoded = [decode_answer(tokenizer, o.generated_tokens) for o in outputs]
        return [a for a, _ in decoded], [t for _, t in decoded]


@dataclass(frozen=True)
class VLLMBackend:
    """vLLM in a child process on a checkpoint of the model as it is now (``eval.vllm``)."""

    python: str | None = None
    weights: str = "merged"
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.8
    max_model_len: int | None = None
    enforce_eager: bool = False
    offload: bool = True
    seed: int = 0

    def check(self) -> None:
        """vllm importable by the interpreter that will run it (before any model loads)."""
        if self.python is None:
            if importlib.util.find_spec("vllm") is None:
                raise ConfigError(
                    "eval.backend=vllm needs the vllm package: pip install -e '.[vllm]' (a GPU machine), "
                    "or eval.vllm.python=<the python of an environment that has vllm>"
                )
            return
        if not Path(self.python).is_file():
            raise ConfigError(f"eval.vllm.python={self.python} is not a file; give an environment's python")
        probe = [self.python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"]
        if subprocess.run(probe, capture_output=True, timeout=120).returncode != 0:
            raise ConfigError(f"eval.vllm.python={self.python} cannot import vllm; pip install vllm there")

    def engine_args(self, lora_rank: int | None) -> dict[str, Any]:
        """Keyword arguments of ``vllm.LLM`` besides the model and tokenizer folders."""
        engine: dict[str, Any] = {
            "dtype": self.dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager,
            "seed": self.seed,
        }
        if self.max_model_len is not None:
            engine["max_model_len"] = self.max_model_len
        if lora_rank is not None:
            engine.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=1)
        return engine

    def write_request(self, model, tokenizer, requests: Sequence[Request], folder: Path) -> dict[str, Any]:
        """The checkpoint under ``folder`` and the worker's request (also written as ``request.json``)."""
        lora = write_checkpoint(model, tokenizer, folder, self.weights)
        request = {
            "model": str(folder / "model"),
            "lora": lora,
            "engine": self.engine_args(lora["rank"] if lora else None),
            "stop_token_ids": [tokenizer.eos_token_id],
            "requests": [
                {"desc": r.desc, "max_new_tokens": r.max_new_tokens, "prompts": encode_prompts(tokenizer, r.prompts)}
                for r in requests
            ],
            "output": str(folder / "answers.json"),
        }
        (folder / "request.json").write_text(json.dumps(request))
        return request

    def command(self, folder: Path) -> list[str]:
        return [self.python or sys.executable, str(WORKER), str(folder / "request.json")]

    def __call__(self, model, tokenizer, requests: Sequence[Request]) -> list[Answers]:
        if not any(r.prompts for r in requests):
            return [([], []) for _ in requests]
        device = next(model.parameters()).device
        # The checkpoint goes to a temporary folder (under $TMPDIR), removed once the answers are read.
        with tempfile.TemporaryDirectory(prefix="sbr-bench-vllm-") as tmp:
            folder = Path(tmp)
            if self.offload and device.type == "cuda":  # vLLM sizes its cache from the GPU memory left free
                model.to("cpu")  # first: the merged weights are then computed on the CPU, not beside the model
                torch.cuda.empty_cache()
            try:
                request = self.write_request(model, tokenizer, requests, folder)
                prompts = sum(len(r.prompts) for r in requests)
                log.info("eval: vLLM on %d prompts: %s", prompts, " ".join(self.command(folder)))
                done = subprocess.run(self.command(folder), env=os.environ.copy())
            finally:
                model.to(device)
            if done.returncode != 0:
                raise RuntimeError(f"the vLLM worker failed with exit code {done.returncode} (its output is above)")
            answers = json.loads(Path(request["output"]).read_text())
        results: list[Answers] = []
        for req, outputs in zip(requests, answers, strict=True):
            if len(outputs) != len(req.prompts):
                raise RuntimeError(f"the vLLM worker answered {len(outputs)} of {len(req.prompts)} {req.desc}")
            # The worker's finish reason says what stopped an answer (vLLM may leave the stop token out).
            texts = [decode_answer(tokenizer, o["tokens"])[0] for o in outputs]
            results.append((texts, [bool(o["truncated"]) for o in outputs]))
        return results


def write_checkpoint(model, tokenizer, folder: Path, weights: str) -> dict[str, Any] | None:
    """The model for vLLM under ``folder/model``; with ``weights=adapter`` also the LoRA (``folder/lora``).

    Returns the LoRA's path and rank for the engine, or None when vLLM loads one checkpoint. The model
    itself is not changed: the merged weights are computed beside it.
    """
    lora_layers = _lora_layers(model)
    target = folder / "model"
    if not lora_layers:  # full fine-tuning or a merged model: its weights as they are
        model.save_pretrained(target, safe_serialization=True)
        lora = None
    elif weights == "merged":
        base = model.get_base_model()
        base.save_pretrained(target, state_dict=merged_state_dict(model), safe_serialization=True)
        lora = None
    else:
        base = model.get_base_model()
        base.save_pretrained(target, state_dict=unadapted_state_dict(model), safe_serialization=True)
        model.save_pretrained(folder / "lora", safe_serialization=True)
        lora = {"path": str(folder / "lora"), "rank": max(model.peft_config[a].r for a in model.peft_config)}
    tokenizer.save_pretrained(target)
    return lora


def _lora_layers(model) -> dict[str, Any]:
    if not hasattr(model, "get_base_model"):
        return {}
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.get_base_model().named_modules() if isinstance(m, LoraLayer)}


def unadapted_state_dict(model) -> dict[str, torch.Tensor]:
    """The base model's weights under the LoRA, named as in the model without it."""
    state = {}
    for key, value in model.get_base_model().state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach()
    return state


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights ``merge_and_unload()`` would give (W + the active adapters' deltas), the model left as it is."""
    state = unadapted_state_dict(model)
    for name, layer in _lora_layers(model).items():
        active = [a for a in layer.active_adapters if a in layer.lora_A]
        if not active or layer.merged:  # a merged layer already holds its delta in the base weight
            continue
        weight = layer.get_base_layer().weight
        delta = sum(layer.get_delta_weight(a) for a in active)
        state[f"{name}.weight"] = (weight.detach() + delta.detach()).to(weight.dtype)
    return state


def make_backend(eval_cfg: Mapping[str, Any]) -> Backend:
    """The backend ``eval_cfg`` (the ``eval`` group as a dict) names, with its options."""
    name = eval_cfg["backend"]
    if name == "hf":
        return HFBackend(batch_size=eval_cfg["batch_size"])
    if name == "continuous":
        return ContinuousBackend(**eval_cfg["continuous"])
    if name == "vllm":
        return VLLMBackend(**eval_cfg["vllm"])
    raise ConfigError(f"eval.backend={name} is not one of: hf, continuous, vllm")


def cache_key_part(eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What of the backend the evaluation's cache key holds: nothing for hf (its keys are as they always
    were), else the backend and its options (greedy answers may differ between backends)."""
    name = eval_cfg["backend"]
    return {} if name == "hf" else {"backend": name, "backend_options": dict(eval_cfg[name])}
