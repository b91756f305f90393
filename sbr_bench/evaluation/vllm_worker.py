"""Greedy answers from vLLM, in a process of its own: ``python vllm_worker.py request.json``.

Started by ``backends.VLLMBackend`` with the interpreter of ``eval.vllm.python`` (any environment
that has vllm; this file imports nothing of sbr_bench, so that environment needs only vllm). The
request names the checkpoint, the optional LoRA, the engine's arguments and, per group of prompts,
their token ids and new-token limit; the answer file holds, per group, each prompt's new token ids
and whether it stopped at the limit (vLLM's finish reason "length"). Detokenizing is left to the
caller, which decodes every backend's tokens the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Run as a script, this file's folder leads sys.path; its neighbours must not shadow installed modules.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    from vllm import LLM, SamplingParams

    llm = LLM(model=request["model"], tokenizer=request["model"], **request["engine"])
    lora_request = None
    if request["lora"] is not None:
        from vllm.lora.request import LoRARequest

        lora_request = LoRARequest("attack", 1, request["lora"]["path"])

    prompts, params, sizes = [], [], []
    for group in request["requests"]:
        sampling = SamplingParams(
            temperature=0.0,  # greedy, as every backend of the evaluation
            max_tokens=group["max_new_tokens"],
            stop_token_ids=request["stop_token_ids"],
            detokenize=False,
        )
        prompts += [{"prompt_token_ids": ids} for ids in group["prompts"]]
        params += [sampling] * len(group["prompts"])
        sizes.append(len(group["prompts"]))
    outputs = llm.generate(prompts, params, use_tqdm=True, lora_request=lora_request) if prompts else []

    # vLLM keeps the input order.
    tokens = [
        {"tokens": list(o.outputs[0].token_ids), "truncated": o.outputs[0].finish_reason == "length"} for o in outputs
    ]
    answers, start = [], 0
    for size in sizes:
        answers.append(tokens[start : start + size])
        start += size
    Path(request["output"]).write_text(json.dumps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
