"""Training and generation throughput against this machine's own matmul limit.

    python benchmarks/throughput.py                  # SmolLM2-135M on the CPU, LoRA, batch 8 x 128, 5 rounds
    python benchmarks/throughput.py --rounds 10 --gen-prompts 64

The limit is measured, not taken from a data sheet: float32 matmuls of the model's own linear
shapes (the batch's tokens times each weight) and a 2048 x 2048 square one, timed in every round;
the best median among them is the "peak" the other figures are a fraction of. The same matmuls in
bfloat16 are timed for reference: the headroom of a bf16 run on CPUs with bf16 units (the jobs
themselves run in float32).

- **LoRA step** (forward, backward and AdamW on the adapter, plain PyTorch: Lightning adds ~1 %,
  ``loop_overhead.py``): its FLOPs are counted from the model's shapes (``step_flops``); the figure
  is counted FLOPs / step time / peak. PyTorch's own counter (``torch.utils.flop_counter``) is run
  on one step as a check: it counts the matrix products but not the CPU attention kernel, so it
  should equal the count without the attention term (tests/test_benchmarks.py checks that on the
  toy model).
- **Generation** (``eval.backend=hf``: greedy, length-sorted batches, KV cache): new tokens per
  second on harmful and benign evaluation prompts, and the weights' matmul FLOPs of the prompt and
  new tokens (2 x weights per token; attention left out) as a fraction of the peak.

Each figure is the median [min, max] over the rounds; the components take turns in every round, so
drift of the machine hits them alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, median_range, write_record
from defense_cost import BATCH_SIZE, SEQ_LEN, fixed_length_examples
from generation import answer_tokens


def linear_shapes(config) -> list[tuple[str, int, int]]:
    """(name, in, out) of one decoder layer's linear weights (Llama-style: GQA attention, gated MLP)."""
    h, i = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    q = config.num_attention_heads * head_dim
    return [
        ("q_proj", h, q),
        ("k_proj", h, kv),
        ("v_proj", h, kv),
        ("o_proj", q, h),
        ("gate_proj", h, i),
        ("up_proj", h, i),
        ("down_proj", i, h),
    ]


def step_flops(config, batch: int, seq: int, rank: int) -> dict[str, float]:
    """FLOPs of one LoRA training step (LoRA of rank ``rank`` on every linear layer, base frozen).

    A matmul of (n x k) by (k x m) is 2nkm FLOPs. Per token and linear weight (k -> m): the forward
    2km, the gradient of its input 2km (not for layer 0's attention projections, whose input, the
    embedding, needs none), no weight gradient (frozen). The adapter (k -> r -> m): forward, the
    gradients of both factors and of the inputs, 6r(k + m). The tied output head: forward and input
    gradient, 4 h V. Attention per layer: QK^T and AV forward (4 T^2 q per sequence) and their four
    backward matmuls (twice that), the causal half counted as work (the kernels compute it).
    """
    tokens = batch * seq
    shapes = linear_shapes(config)
    layers = config.num_hidden_layers
    first_layer_attention = {"q_proj", "k_proj", "v_proj"}
    base = sum(4 * k * m for _, k, m in shapes) * layers
    base -= sum(2 * k * m for name, k, m in shapes if name in first_layer_attention)
    adapter = sum(6 * rank * (k + m) for _, k, m in shapes) * layers
    adapter -= sum(2 * rank * k for name, k, m in shapes if name in first_layer_attention)  # no input gradient
    head = 4 * config.hidden_size * config.vocab_size
    q_width = dict((name, m) for name, _, m in shapes)["q_proj"]
    attention = 12 * batch * seq * seq * q_width * layers
    return {
        "linear": float(base * tokens),
        "adapter": float(adapter * tokens),
        "head": float(head * tokens),
        "attention": float(attention),
        "total": float((base + adapter + head) * tokens + attention),
    }


def weight_flops_per_token(config) -> float:
    """2 x the weights a token passes through (decoder linears and the output head): its forward matmuls."""
    per_layer = sum(k * m for _, k, m in linear_shapes(config))
    return 2.0 * (per_layer * config.num_hidden_layers + config.hidden_size * config.vocab_size)


def matmul_rates(config, tokens: int, repeats: int = 5, dtype=None) -> dict[str, float]:
    """GFLOP/s of matmuls (float32 unless ``dtype``): each linear shape of the model at ``tokens`` rows, and 2048^2."""
    import torch

    dtype = dtype or torch.float32
    shapes = {f"{tokens}x{k}x{m}": (tokens, k, m) for _, k, m in linear_shapes(config)}
    head = (tokens, config.hidden_size, config.vocab_size)
    shapes[f"{tokens}x{config.hidden_size}x{config.vocab_size} (head)"] = head
    shapes["2048x2048x2048"] = (2048, 2048, 2048)
    rates = {}
    for name, (n, k, m) in shapes.items():
        a, b = torch.randn(n, k, dtype=dtype), torch.randn(k, m, dtype=dtype)
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        rates[name] = 2 * n * k * m / statistics.median(times) / 1e9
    return rates


def counted_by_torch(model, batch: dict) -> float:
    """FLOPs of one forward and backward as PyTorch's FLOP counter sees them (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2_135m", help="model option (smollm2_135m or toy)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per round (after a warm-up step)")
    parser.add_argument("--gen-prompts", type=int, default=32, help="evaluation prompts generated per round")
    parser.add_argument("--gen-tokens", type=int, default=48, help="new-token limit (the CPU tier's eval)")
    parser.add_argument("--gen-batch", type=int, default=32, help="eval.batch_size")
    args = parser.parse_args()

    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from sbr_bench.attacks.attack_set import build_attack_set
    from sbr_bench.data.formatting import PadCollator
    from sbr_bench.evaluation.generate import encode_prompts, generate_answers
    from sbr_bench.models.adapters import apply_adapter

    cfg = compose([f"model={args.model}", "logger=none"])
    pools = instantiate(cfg.data)
    model, tokenizer = instantiate(cfg.model)
    config = model.config
    rank = int(cfg.adapter.r)
    trainable = apply_adapter(model, **OmegaConf.to_container(cfg.adapter, resolve=True), seed=0)
    trainable.train()
    examples = fixed_length_examples(tokenizer, build_attack_set(pools, BATCH_SIZE * 4, 0.5, 0), SEQ_LEN)
    batches = list(DataLoader(examples, batch_size=BATCH_SIZE, collate_fn=PadCollator(tokenizer.pad_token_id)))
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    counted = step_flops(config, BATCH_SIZE, SEQ_LEN, rank)
    by_torch = counted_by_torch(trainable, batches[0])

    harmful = list(pools.eval_harmful)[: args.gen_prompts // 2]
    benign = list(pools.eval_benign)[: args.gen_prompts - len(harmful)]
    prompts = harmful + benign
    prompt_tokens = sum(len(ids) for ids in encode_prompts(tokenizer, prompts))
    weights_per_token = weight_flops_per_token(config)

    step_rates, gen_rates, gen_fractions, step_fractions, peaks = [], [], [], [], []
    step_seconds, bf16_peaks = [], []
    answers_seen = set()
    for round_ in range(args.rounds):
        rates = matmul_rates(config, BATCH_SIZE * SEQ_LEN)
        peak = max(rates.values())
        peaks.append(peak)
        # The headroom a bf16 run would have (not used here: the jobs train and generate in float32).
        bf16_peaks.append(max(matmul_rates(config, BATCH_SIZE * SEQ_LEN, dtype=torch.bfloat16).values()))
        times = []
        for n in range(args.steps + 1):
            start = time.perf_counter()
            trainable(**batches[n % len(batches)]).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        step = statistics.median(times[1:])
        step_seconds.append(step)
        step_rates.append(counted["total"] / step / 1e9)
        step_fractions.append(step_rates[-1] / peak)

        start = time.perf_counter()
        answers, truncated = generate_answers(trainable, tokenizer, prompts, args.gen_tokens, args.gen_batch)
        seconds = time.perf_counter() - start
        answers_seen.add(tuple(answers))
        new_tokens = sum(answer_tokens(tokenizer, answers, truncated, args.gen_tokens))
        gen_rates.append(new_tokens / seconds)
        gen_fractions.append(weights_per_token * (prompt_tokens + new_tokens) / seconds / 1e9 / peak)
        print(
            f"round {round_ + 1}/{args.rounds}: peak {peak:.0f} GFLOP/s, step {step:.2f} s "
            f"({step_fractions[-1]:.0%} of peak), generation {gen_rates[-1]:.0f} tok/s ({gen_fractions[-1]:.0%})",
            flush=True,
        )

    agreement = (counted["total"] - counted["attention"]) / by_torch - 1
    print(f"\nstep FLOPs counted from the shapes: {counted['total'] / 1e12:.3f} T", end="")
    print(f" (without attention {agreement:+.2%} off torch's counter, {by_torch / 1e12:.3f} T);", end="")
    shares = {k: v / counted["total"] for k, v in counted.items() if k != "total"}
    print(" " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    print("matmul rates of the last round (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))
    print("\n| what | figure, median [min, max] over the rounds |")
    print("|---|---|")
    print(f"| matmul peak, float32 (GFLOP/s) | {median_range(peaks, 0)} |")
    print(f"| matmul peak, bfloat16, for reference (GFLOP/s) | {median_range(bf16_peaks, 0)} |")
    print(f"| LoRA step, batch {BATCH_SIZE} x {SEQ_LEN} (s) | {median_range(step_seconds, 2)} |")
    print(f"| LoRA step (GFLOP/s) | {median_range(step_rates, 0)} |")
    print(f"| LoRA step / peak | {median_range([100 * f for f in step_fractions], 0)} % |")
    generated = f"{len(prompts)} prompts x <= {args.gen_tokens} new tokens"
    print(f"| generation, {generated} (tok/s) | {median_range(gen_rates, 0)} |")
    print(f"| generation's weight matmuls / peak | {median_range([100 * f for f in gen_fractions], 0)} % |")
    record = {
        "model": args.model,
        "rounds": args.rounds,
        "batch": [BATCH_SIZE, SEQ_LEN],
        "lora_rank": rank,
        "step_flops": counted,
        "step_flops_torch_counter": by_torch,
        "peak_gflops": peaks,
        "peak_gflops_bf16": bf16_peaks,
        "matmul_gflops_last_round": rates,
        "step_s": step_seconds,
        "step_gflops": step_rates,
        "step_fraction_of_peak": step_fractions,
        "generation": {
            "prompts": len(prompts),
            "prompt_tokens": prompt_tokens,
            "max_new_tokens": args.gen_tokens,
            "batch_size": args.gen_batch,
            "tokens_per_s": gen_rates,
            "weight_matmul_fraction_of_peak": gen_fractions,
            "same_answers_every_round": len(answers_seen) == 1,
        },
    }
    path = write_record("throughput", record)
    print(
        f"throughput: the LoRA step runs at {statistics.median(step_fractions):.0%} of the measured matmul peak "
        f"({statistics.median(peaks):.0f} GFLOP/s); generation {statistics.median(gen_rates):.0f} tok/s "
        f"({statistics.median(gen_fractions):.0%}); record {path}"
    )


if __name__ == "__main__":
    main()
