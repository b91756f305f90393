"""SBR's overhead: step time with ``defense=sbr`` over ``defense=none``, with 1 and 8 anchors.

    python benchmarks/sbr_overhead.py                 # SmolLM2-135M on the CPU, LoRA, batch 8 x 128
    python benchmarks/sbr_overhead.py --rounds 3 --steps 4

Goals (performance issue): <= 1.05 with one anchor, <= 1.15 with eight. The variants take turns
over rounds through the real SafetyModule and Lightning Trainer (``defense_cost.run_defense``), so
machine drift hits them alike; each figure is the median of the timed steps (the first step of
every run is a warm-up). ``sbr K=8 unshared`` runs the eight anchors as eight full sequences
(``share_prefix=false``) to show what the shared chat-template prefix saves.

What bounds the overhead: the anchor pass is a forward and backward over the anchors' tokens (on
SmolLM2, 24 template tokens shared by all anchors plus ~23 of each anchor's own) next to the
training batch's 1024; the script also times the anchor pass alone and prints the anchor tokens
relative to the batch's, the floor of the ratio on hardware where time follows tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, write_record
from defense_cost import BATCH_SIZE, SEQ_LEN, run_defense

VARIANTS = {
    "none": ("none", ()),
    "sbr K=1": ("sbr", ("defense.num_anchors=1",)),
    "sbr K=8": ("sbr", ("defense.num_anchors=8",)),
    "sbr K=8 unshared": ("sbr", ("defense.num_anchors=8", "defense.share_prefix=false")),
}
GOALS = {"sbr K=1": 1.05, "sbr K=8": 1.15}


def anchor_pass_cost(model_option: str, num_anchors: int, share_prefix: bool, repeats: int = 5) -> dict:
    """Seconds of one anchor forward+backward alone, and the tokens it runs."""
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from sbr_bench.defenses.sbr import SBR
    from sbr_bench.models.adapters import apply_adapter

    cfg = compose([f"model={model_option}", "logger=none"])
    model, tokenizer = instantiate(cfg.model)
    model = apply_adapter(model, seed=0)
    model.train()
    sbr = SBR(num_anchors=num_anchors, share_prefix=share_prefix)
    sbr.setup(SimpleNamespace(model=model, tokenizer=tokenizer, pools=instantiate(cfg.data)))
    lengths = sbr.anchor_mask.sum(dim=1)
    tokens = int(lengths.sum()) - (len(lengths) - 1) * sbr.prefix_len
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        sbr.distance(model).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times[1:]), "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2_135m", help="model option (smollm2_135m or toy)")
    parser.add_argument("--rounds", type=int, default=2, help="turns each variant takes")
    parser.add_argument("--steps", type=int, default=4, help="steps per turn (the first is a warm-up)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()

    import logging

    import torch

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name, (defense, overrides) in VARIANTS.items():
            step_times, _ = run_defense(defense, args.model, args.steps, device, overrides)
            times[name] += step_times[1:]
            median = statistics.median(step_times[1:])
            print(f"round {round_ + 1}/{args.rounds} {name}: {median:.3f} s/step", flush=True)

    base = statistics.median(times["none"])
    batch_tokens = BATCH_SIZE * SEQ_LEN
    rows = []
    for name, (_, overrides) in VARIANTS.items():
        row = {"variant": name, "step_s": round(statistics.median(times[name]), 4)}
        row["ratio"] = round(row["step_s"] / base, 3)
        row["goal"] = GOALS.get(name)
        if name != "none":
            k = int(overrides[0].split("=")[1])
            cost = anchor_pass_cost(args.model, k, "defense.share_prefix=false" not in overrides)
            row["anchor_pass_s"] = round(cost["seconds"], 4)
            row["anchor_tokens"] = cost["tokens"]
            row["token_floor"] = round(1 + cost["tokens"] / batch_tokens, 3)
        rows.append(row)

    print("\n| variant | s/step | step / none | goal | anchor pass alone (s) | anchor tokens | 1 + tokens / 1024 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        goal = f"<= {r['goal']}" if r["goal"] else ""
        print(
            f"| {r['variant']} | {r['step_s']:.2f} | {r['ratio']:.2f} | {goal} | {r.get('anchor_pass_s', '')} | "
            f"{r.get('anchor_tokens', '')} | {r.get('token_floor', '')} |"
        )
    path = write_record(
        "sbr_overhead", {"model": args.model, "batch": [BATCH_SIZE, SEQ_LEN], "device_used": device, "rows": rows}
    )
    k1, k8 = rows[1], rows[2]
    print(
        f"sbr_overhead: sbr/none {k1['ratio']:.2f} with 1 anchor (goal <= 1.05), {k8['ratio']:.2f} with 8 "
        f"(goal <= 1.15; {rows[3]['ratio']:.2f} without the shared prefix); record {path}"
    )


if __name__ == "__main__":
    main()
