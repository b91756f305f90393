"""A stand-in for the vllm package in tests (this machine has no GPU): the entry points the vLLM
worker calls (``LLM``, ``SamplingParams``, ``vllm.lora.request.LoRARequest``), answered by
transformers' greedy ``generate`` one prompt at a time on the checkpoint the worker was given, with
the LoRA applied by peft when there is one. Each ``LLM`` appends its arguments to the JSON-lines file
named by ``FAKE_VLLM_LOG``, so a test can check what the worker passed to the engine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@dataclass
class CompletionOutput:
    token_ids: list[int]
    finish_reason: str


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]


class LLM:
    def __init__(self, model: str, tokenizer: str, **engine):
        from transformers import AutoModelForCausalLM

        self.path = model
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.engine = {"model": model, "tokenizer": tokenizer, **engine}
        self.log({"engine": self.engine})

    def log(self, entry: dict) -> None:
        if os.environ.get("FAKE_VLLM_LOG"):
            with open(os.environ["FAKE_VLLM_LOG"], "a") as f:
                f.write(json.dumps(entry) + "\n")

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=True, lora_request=None):
        model = self.model
        if lora_request is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(self.model, lora_request.lora_path).eval()
        self.log({"sampling": [p.kwargs for p in params], "lora": lora_request.lora_path if lora_request else None})
        results = []
        for prompt, p in zip(prompts, params, strict=True):
            ids = torch.tensor([prompt["prompt_token_ids"]])
            stop = p.kwargs["stop_token_ids"]
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=p.kwargs["max_tokens"],
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=stop[0],
            )
            new = out[0, ids.shape[1] :].tolist()
            finish = "stop" if any(t in stop for t in new) else "length"
            results.append(RequestOutput([CompletionOutput(new, finish)]))
        return results
