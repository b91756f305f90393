"""Training-loop overhead: the LightningModule step vs a plain PyTorch loop doing the same work.

    python benchmarks/loop_overhead.py                 # SmolLM2-135M on the CPU, LoRA, batch 8 x 128
    python benchmarks/loop_overhead.py --model toy --steps 10

Both loops train a fresh LoRA (the attack's adapter config) with AdamW on the same batches and the
same loss (``SafetyModule.task_loss``: response-only cross-entropy); the plain loop calls it
directly and steps the optimizer itself, the other runs ``SafetyModule`` under the Lightning
Trainer exactly as a job does (``training.fit``, defense ``none``, logging every step). Each step is
timed from batch start to the end of the optimizer step; the loops take turns over rounds and the
figure is the ratio of median step times. Goal (performance issue): at most 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, write_record
from defense_cost import BATCH_SIZE, SEQ_LEN, fixed_length_examples, run_defense


def plain_loop(model_option: str, steps: int, device: str) -> list[float]:
    """Step times of a hand-written loop: forward, loss, backward, AdamW step, zero_grad."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from sbr_bench.attacks.attack_set import build_attack_set
    from sbr_bench.data.formatting import PadCollator
    from sbr_bench.defenses.none import NoDefense
    from sbr_bench.models.adapters import apply_adapter
    from sbr_bench.training.module import Optim, SafetyModule

    cfg = compose([f"model={model_option}", "logger=none"])
    pools = instantiate(cfg.data)
    model, tokenizer = instantiate(cfg.model)
    model.to(device)
    trainable = apply_adapter(model, **OmegaConf.to_container(cfg.adapter, resolve=True), seed=0)
    trainable.train()
    examples = fixed_length_examples(tokenizer, build_attack_set(pools, BATCH_SIZE * steps, 0.5, 0), SEQ_LEN)
    loader = DataLoader(
        examples,
        batch_size=BATCH_SIZE,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=PadCollator(tokenizer.pad_token_id),
    )
    loss_of = SafetyModule(trainable, tokenizer, NoDefense(), Optim(lr=1e-4), stage="attack").task_loss
    optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for batch in loader:
        start = time.perf_counter()
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.item()  # the Lightning loop also reads the loss back for its progress bar / logger
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2_135m", help="model option (smollm2_135m or toy)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="steps per turn (the first is a warm-up)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()

    import logging

    import torch

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    times: dict[str, list[float]] = {"plain": [], "lightning": []}
    for round_ in range(args.rounds):
        times["plain"] += plain_loop(args.model, args.steps, device)[1:]
        times["lightning"] += run_defense("none", args.model, args.steps, device)[0][1:]
        print(
            f"round {round_ + 1}/{args.rounds}: plain {statistics.median(times['plain']):.3f} s/step, "
            f"lightning {statistics.median(times['lightning']):.3f} s/step",
            flush=True,
        )
    plain, lightning = statistics.median(times["plain"]), statistics.median(times["lightning"])
    record = {
        "model": args.model,
        "device_used": device,
        "batch": [BATCH_SIZE, SEQ_LEN],
        "plain_step_s": round(plain, 4),
        "lightning_step_s": round(lightning, 4),
        "ratio": round(lightning / plain, 3),
        "goal_ratio": 1.05,
        "steps_timed": {k: len(v) for k, v in times.items()},
    }
    path = write_record("loop_overhead", record)
    print(
        f"loop_overhead: Lightning step / plain PyTorch step = {record['ratio']:.3f} (goal <= 1.05; "
        f"{lightning:.3f} vs {plain:.3f} s); record {path}"
    )


if __name__ == "__main__":
    main()
