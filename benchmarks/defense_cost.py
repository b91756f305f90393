"""Per-defense cost: time per training step and peak memory, relative to ``defense=none``.

    python benchmarks/defense_cost.py                            # every option of conf/defense/, SmolLM2, CPU
    python benchmarks/defense_cost.py --defenses none sbr vaccine --rounds 1 --model toy

Every defense trains a fresh LoRA adapter (its stage's adapter config) on the same batches of
8 x 128 tokens (response-only loss) through the real ``SafetyModule`` and Lightning Trainer; a
callback times each training step (forward, the defense's extra passes, backward, optimizer step).
Alignment-stage defenses run as in the alignment stage, with their extra data streams. One-time
set-up (SBR's reference states, EWC's Fisher, Lisa's anchors) is not part of a step and is not
timed. Defenses take turns over rounds, so that drift of the machine hits them alike; a defense's
figure is the median of its timed steps (the first step of every run is a warm-up).

The goal of each defense: a step time within 1.15 x the forward/backward passes per step of its
paper's algorithm (``passes_per_step``, declared on its class; docs/defenses.md) of plain SFT's. A
defense that declares none is timed all the same and reported with an unknown goal ("?").

Peak memory: each defense also runs a few steps alone in a subprocess, which reports its peak
resident memory during training (``VmHWM``, reset once the model is loaded: model, optimizer
state, the defense's set-up, activations and Python together, without the transient peak of
loading the weights; glibc's mmap threshold fixed, so that freed tensors leave it); on a GPU,
``torch.cuda.max_memory_allocated`` of the in-process run instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pytorch_lightning as pl
from common import compose, median_range, write_record

from sbr_bench.defenses import defense_options

BATCH_SIZE, SEQ_LEN = 8, 128


def fixed_length_examples(tokenizer, pairs, length: int) -> list[dict]:
    """Examples of exactly ``length`` tokens: prompt + response, the response repeated to fill."""
    from sbr_bench.data.formatting import IGNORE_INDEX, encode_pair

    out = []
    for pair in pairs:
        e = encode_pair(tokenizer, pair.prompt, pair.response, length)
        answer = [t for t, lab in zip(e["input_ids"], e["labels"], strict=True) if lab != IGNORE_INDEX]
        ids, labels = list(e["input_ids"]), list(e["labels"])
        while len(ids) < length:
            take = answer[: length - len(ids)]
            ids += take
            labels += take
        out.append({"input_ids": ids, "labels": labels})
    return out


class StepTimer(pl.Callback):
    """Wall time of every training step."""

    def __init__(self):
        self.times: list[float] = []
        self.start = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.start)


def stage_adapter(cfg, defense) -> dict:
    """The adapter config of the stage ``defense`` acts in, for a fresh model.

    An alignment-stage defense trains the alignment's LoRA (``align.adapter``); the attack's
    ``adapter`` may be ``kind: continue`` there (Booster's protocol), which needs that LoRA to exist.
    """
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.align.adapter if defense.stage == "align" else cfg.adapter, resolve=True)


def run_defense(
    name: str, model_option: str, steps: int, device: str, overrides: tuple[str, ...] = ()
) -> tuple[list[float], float | None]:
    """Train ``steps`` steps under ``defense=name`` (plus config ``overrides``); (step times, peak GPU
    memory in MiB or None)."""
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from sbr_bench.attacks.attack_set import build_attack_set
    from sbr_bench.data.formatting import PadCollator
    from sbr_bench.models.adapters import apply_adapter
    from sbr_bench.training.fit import fit, stage_loaders
    from sbr_bench.training.module import Optim, SafetyModule

    cfg = compose([f"model={model_option}", f"defense={name}", "logger=none", *overrides])
    pools = instantiate(cfg.data)
    defense = instantiate(cfg.defense)
    defense.check(pools)
    model, tokenizer = instantiate(cfg.model)
    model.to(device)
    trainable = apply_adapter(model, **stage_adapter(cfg, defense), seed=0)

    attack_set = build_attack_set(pools, BATCH_SIZE * steps, 0.5, 0)
    examples = fixed_length_examples(tokenizer, attack_set, SEQ_LEN)
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(
        examples,
        batch_size=BATCH_SIZE,
        shuffle=True,
        generator=generator,
        collate_fn=PadCollator(tokenizer.pad_token_id),
    )
    _, streams = stage_loaders(defense, pools, attack_set, tokenizer, SEQ_LEN, BATCH_SIZE, 0)
    stage = "align" if defense.stage == "align" else "attack"
    module = SafetyModule(trainable, tokenizer, defense, Optim(lr=1e-4), stage=stage, pools=pools, streams=streams)
    timer = StepTimer()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    trainer_cfg = {"accelerator": "gpu" if device == "cuda" else "cpu", "devices": 1, "enable_progress_bar": False}
    fit(module, loader, trainer_cfg, None, "/tmp/sbr-bench-benchmark", max_steps=steps, callbacks=[timer])
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return timer.times, peak


def declared_passes(name: str) -> int | None:
    """``passes_per_step`` of the defense of ``defense=<name>`` at its settings (None: not declared)."""
    from hydra.utils import instantiate

    return getattr(instantiate(compose([f"defense={name}"]).defense), "passes_per_step", None)


def reset_peak_rss() -> None:
    """Start this process's VmHWM again from its current resident memory (Linux: clear_refs 5).

    Loading the weights passes through a transient peak (the file's tensors and the model's at once)
    that would otherwise set the figure for every defense alike and hide the differences.
    """
    with contextlib.suppress(OSError):  # not Linux, or not permitted: the peak then includes the loading
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: reset at exec, unlike ru_maxrss, which a child
    inherits from the process that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def probe_memory(name: str, model_option: str, steps: int) -> float:
    """Peak resident memory (MiB) of a subprocess that trains ``steps`` steps under ``defense=name``."""
    # glibc's mmap threshold grows with every large block freed, after which freed tensors stay in the
    # heap and count as resident: the peak would follow the allocator's history, not the tensors
    # alive at once. A fixed threshold maps every block over 128 KiB on its own and unmaps it on free.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    result = subprocess.run(
        [sys.executable, __file__, "--probe", name, "--model", model_option, "--steps", str(steps)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory probe of {name} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--defenses", nargs="+", default=defense_options(), help="default: every option")
    parser.add_argument("--model", default="smollm2_135m", help="model option (smollm2_135m or toy)")
    parser.add_argument("--rounds", type=int, default=2, help="turns each defense takes")
    parser.add_argument("--steps", type=int, default=4, help="steps per turn (the first is a warm-up)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory subprocesses")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import logging

    import torch

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.probe:
        run_defense(args.probe, args.model, args.steps, "cpu")
        print(json.dumps({"peak_rss_mib": peak_rss_mib()}))
        return
    if args.memory_only:
        names = ["none", *[d for d in args.defenses if d != "none"]]
        memory = {name: probe_memory(name, args.model, 2) for name in names}
        for name in names:
            print(f"| {name} | {memory[name]:.0f} | {memory[name] / memory['none']:.2f} |")
        write_record("defense_memory", {"model": args.model, "peak_rss_mib": memory})
        return

    names = ["none", *[d for d in args.defenses if d != "none"]]
    times: dict[str, list[float]] = {n: [] for n in names}
    round_medians: dict[str, list[float]] = {n: [] for n in names}  # one per round, for the spread
    gpu_peak: dict[str, float] = {}
    for round_ in range(args.rounds):
        for name in names:
            step_times, peak = run_defense(name, args.model, args.steps, device)
            times[name] += step_times[1:]
            round_medians[name].append(statistics.median(step_times[1:]))
            if peak is not None:
                gpu_peak[name] = max(peak, gpu_peak.get(name, 0.0))
            print(f"round {round_ + 1}/{args.rounds} {name}: {round_medians[name][-1]:.3f} s/step", flush=True)

    memory = gpu_peak
    if not memory and not args.no_memory:
        memory = {name: probe_memory(name, args.model, 2) for name in names}
    base = statistics.median(times["none"])
    rows = []
    for name in names:
        step = statistics.median(times[name])
        passes = declared_passes(name)
        row = {
            "defense": name,
            "step_s": round(step, 4),
            "time_ratio": round(step / base, 3),
            "passes": passes,
            "goal_ratio": round(passes * 1.15, 2) if passes is not None else None,
            "steps_timed": len(times[name]),
            # each round's median over none's median of the same round: the ratio's spread over rounds
            "round_ratios": [round(t / b, 3) for t, b in zip(round_medians[name], round_medians["none"], strict=True)],
        }
        if name in memory:
            row["peak_mib"] = round(memory[name], 1)
            row["memory_ratio"] = round(memory[name] / memory["none"], 3)
        rows.append(row)

    kind = "GPU" if gpu_peak else "RSS"
    print(
        f"\n| defense | s/step | time / none | per round: median [min, max] | goal (passes x 1.15) "
        f"| peak {kind} MiB | memory / none |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['defense']} | {r['step_s']:.2f} | {r['time_ratio']:.2f} | {median_range(r['round_ratios'], 2)} | "
            f"{goal(r['goal_ratio'])} | {r.get('peak_mib', float('nan')):.0f} | "
            f"{r.get('memory_ratio', float('nan')):.2f} |"
        )
    path = write_record(
        "defense_cost",
        {"model": args.model, "batch": [BATCH_SIZE, SEQ_LEN], "device_used": device, "rows": rows},
    )
    summary = [
        f"step time / none from {min(r['time_ratio'] for r in rows):.2f} to {max(r['time_ratio'] for r in rows):.2f}"
    ]
    with_goal = [r for r in rows if r["goal_ratio"] is not None]
    if with_goal:
        worst = max(with_goal, key=lambda r: r["time_ratio"] / r["goal_ratio"])
        summary.append(
            f"tightest against its goal: {worst['defense']} {worst['time_ratio']:.2f} ({goal(worst['goal_ratio'])})"
        )
    unknown = [r["defense"] for r in rows if r["goal_ratio"] is None]
    if unknown:
        summary.append(f"no passes_per_step declared (goal ?): {', '.join(unknown)}")
    print(f"defense_cost: {'; '.join(summary)}; record {path}")


def goal(ratio: float | None) -> str:
    """The goal column: ``<= ratio``, or ``?`` for a defense that declares no ``passes_per_step``."""
    return "?" if ratio is None else f"<= {ratio}"


if __name__ == "__main__":
    main()
