"""Evaluation speed: batched, length-sorted, KV-cached greedy generation vs one prompt at a time.

    python benchmarks/generation.py                    # SmolLM2-135M on the CPU, 64 prompts x 64 new tokens
    python benchmarks/generation.py --prompts 16 --batch-size 16 --model toy

Both modes run the evaluation's own ``greedy_generate`` (chat template, left padding, KV cache);
one prompt at a time is ``batch_size=1``. The figure is generated tokens per second (answer tokens up
to and including the end-of-turn token), and the greedy answers of the two modes are compared
one by one. Goal (performance issue): at least 5x the tokens per second, identical answers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, write_record


def timed_generation(model, tokenizer, prompts, new_tokens: int, batch_size: int) -> tuple[list[str], float]:
    from sbr_bench.evaluation.generate import greedy_generate

    start = time.perf_counter()
    answers = greedy_generate(model, tokenizer, prompts, new_tokens, batch_size, desc=f"batch {batch_size}")
    return answers, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2_135m", help="model option (smollm2_135m or toy)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="the batched mode's batch (eval.batch_size)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()

    import torch
    from hydra.utils import instantiate

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = compose([f"model={args.model}", "logger=none"])
    pools = instantiate(cfg.data)
    model, tokenizer = instantiate(cfg.model)
    model.to(device)
    half = args.prompts // 2  # harmful and benign evaluation prompts: answers of every length
    prompts = pools.eval_harmful[:half] + pools.eval_benign[: args.prompts - half]

    timed_generation(model, tokenizer, prompts[:4], 4, 4)  # warm-up
    batched, batched_s = timed_generation(model, tokenizer, prompts, args.new_tokens, args.batch_size)
    single, single_s = timed_generation(model, tokenizer, prompts, args.new_tokens, 1)
    batched_again, batched_again_s = timed_generation(model, tokenizer, prompts, args.new_tokens, args.batch_size)
    batched_s = min(batched_s, batched_again_s)

    # Tokens the answers hold (+1 for the end-of-turn token where the answer stopped early).
    tokens = 0
    for answer in single:
        n = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        tokens += min(args.new_tokens, n + 1)
    same = sum(a == b for a, b in zip(batched, single, strict=True))
    differing = [i for i, (a, b) in enumerate(zip(batched, single, strict=True)) if a != b]
    speedup = single_s / batched_s
    record = {
        "model": args.model,
        "device_used": device,
        "prompts": len(prompts),
        "max_new_tokens": args.new_tokens,
        "batch_size": args.batch_size,
        "generated_tokens": tokens,
        "batched_s": round(batched_s, 3),
        "one_at_a_time_s": round(single_s, 3),
        "batched_tokens_per_s": round(tokens / batched_s, 1),
        "one_at_a_time_tokens_per_s": round(tokens / single_s, 1),
        "speedup": round(speedup, 2),
        "goal_speedup": 5.0,
        "identical_answers": same,
        "differing_prompts": differing,
        "batched_runs_identical": batched == batched_again,
    }
    path = write_record("generation", record)
    print(
        f"generation: batched {record['batched_tokens_per_s']} tok/s vs one at a time "
        f"{record['one_at_a_time_tokens_per_s']} tok/s = {speedup:.1f}x (goal >= 5x); identical greedy answers "
        f"{same}/{len(prompts)}; record {path}"
    )


if __name__ == "__main__":
    main()
