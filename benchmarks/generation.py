"""Generation speed of the evaluation's backends (eval.backend): static batches (hf) vs continuous batching.

    python benchmarks/generation.py                        # SmolLM2-135M on the CPU, 3 interleaved rounds
    python benchmarks/generation.py --modes hf,continuous,single --rounds 5
    python benchmarks/generation.py --model toy --prompts 16 --rounds 2

Two prompt sets, each answered by every mode in every round (rounds interleave the modes, so drift of
the machine hits them alike):

- ``fixed``: ``--prompts`` harmful and benign evaluation prompts x ``--new-tokens`` new tokens (64 x 64);
- ``mixed``: harmful prompts (the model refuses many of them in a sentence), sentiment-task prompts
  (a word) and benign requests (long answers), ``--mixed-new-tokens`` at most (128): answers of very
  different lengths, where a static batch waits for its longest row and continuous batching does not.

Modes: ``hf`` (``eval.backend=hf``, batches of ``--batch-size``), ``continuous``
(``eval.backend=continuous`` with the default ``eval.continuous`` settings), ``single`` (hf one prompt
at a time). The figure is generated tokens per second: the tokens of the hf answers (up to and
including the end-of-turn token) over each mode's time, min / median / max over the rounds. Every
mode's greedy answers are compared with hf's, one by one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, write_record


def backend_for(mode: str, batch_size: int, continuous: dict):
    from sbr_bench.evaluation.backends import ContinuousBackend, HFBackend

    if mode == "hf":
        return HFBackend(batch_size=batch_size)
    if mode == "single":
        return HFBackend(batch_size=1)
    if mode == "continuous":
        return ContinuousBackend(**continuous)
    raise SystemExit(f"--modes: {mode} is not one of hf, continuous, single")


def answer_tokens(tokenizer, answers: list[str], truncated: list[bool], limit: int) -> list[int]:
    """New tokens per answer: its own tokens, plus the end-of-turn token where it ended by itself."""
    counts = []
    for answer, cut in zip(answers, truncated, strict=True):
        n = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        counts.append(limit if cut else min(limit, n + 1))
    return counts


def spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1), "max": round(max(values), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2_135m", help="model option (smollm2_135m or toy)")
    parser.add_argument("--modes", default="hf,continuous", help="comma-separated: hf, continuous, single")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64, help="the fixed set's new-token limit")
    parser.add_argument("--mixed-new-tokens", type=int, default=128, help="the mixed set's limit (eval.max_new_tokens)")
    parser.add_argument("--batch-size", type=int, default=32, help="hf's batch (eval.batch_size)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()

    import torch
    from hydra.utils import instantiate

    from sbr_bench.evaluation.backends import Request
    from sbr_bench.pipeline import resolved

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = compose([f"model={args.model}", "logger=none"])
    continuous = resolved(cfg.eval.continuous)
    pools = instantiate(cfg.data)
    model, tokenizer = instantiate(cfg.model)
    model.to(device).eval()
    n = args.prompts
    third = n // 3
    sets = {
        "fixed": Request(pools.eval_harmful[: n // 2] + pools.eval_benign[: n - n // 2], args.new_tokens, "fixed"),
        "mixed": Request(
            pools.eval_harmful[n // 2 : n // 2 + third]
            + [p.prompt for p in pools.task_test[:third]]
            + pools.eval_benign[n - n // 2 : n - n // 2 + n - 2 * third],
            args.mixed_new_tokens,
            "mixed",
        ),
    }
    modes = args.modes.split(",")
    backends = {m: backend_for(m, args.batch_size, continuous) for m in modes}
    for backend in backends.values():  # warm-up: first calls pay for allocation and lazy imports
        backend(model, tokenizer, [Request(sets["fixed"].prompts[:4], 4, "warm-up")])

    seconds = {(s, m): [] for s in sets for m in modes}
    answers: dict[tuple[str, str], list[tuple[list[str], list[bool]]]] = {key: [] for key in seconds}
    for _ in range(args.rounds):
        for set_name, request in sets.items():
            for mode, backend in backends.items():
                start = time.perf_counter()
                result = backend(model, tokenizer, [request])[0]
                seconds[set_name, mode].append(time.perf_counter() - start)
                answers[set_name, mode].append(result)

    record = {
        "model": args.model,
        "device_used": device,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "continuous": continuous,
        "sets": {},
    }
    lines = []
    for set_name, request in sets.items():
        reference = answers[set_name, modes[0]][0]
        tokens = answer_tokens(tokenizer, *reference, request.max_new_tokens)
        entry = {
            "prompts": len(request.prompts),
            "max_new_tokens": request.max_new_tokens,
            "generated_tokens": sum(tokens),
            "answer_tokens": spread([float(t) for t in tokens]),
            "stopped_early": sum(t < request.max_new_tokens for t in tokens),
            "modes": {},
        }
        parts = []
        for mode in modes:
            rates = [sum(tokens) / s for s in seconds[set_name, mode]]
            first = answers[set_name, mode][0]
            same = sum(a == b for a, b in zip(first[0], reference[0], strict=True))
            entry["modes"][mode] = {
                "seconds": spread(seconds[set_name, mode]),
                "tokens_per_s": spread(rates),
                "identical_answers_to_" + modes[0]: same,
                "same_truncation": first[1] == reference[1],
                "rounds_identical": all(r == first for r in answers[set_name, mode]),
            }
            parts.append(f"{mode} {spread(rates)['median']} tok/s [{min(rates):.1f}, {max(rates):.1f}] ({same} same)")
        if len(modes) > 1:
            base = statistics.median(seconds[set_name, modes[0]])
            entry["time_ratios_to_" + modes[0]] = {
                m: round(statistics.median(seconds[set_name, m]) / base, 2) for m in modes[1:]
            }
        record["sets"][set_name] = entry
        lines.append(f"{set_name} ({len(request.prompts)} x <= {request.max_new_tokens}): " + "; ".join(parts))
    path = write_record("generation", record)
    print(f"generation, {args.model} on {device}, median [min, max] over {args.rounds} rounds:")
    for line in lines:
        print("  " + line)
    print(f"record {path}")


if __name__ == "__main__":
    main()
