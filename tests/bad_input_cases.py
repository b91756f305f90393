"""Bad command lines and the one line each gets (used by tests/test_bad_input.py and benchmarks/bad_input.py).

Each case: a name, the arguments after ``sbr-bench`` (``{files}`` is the folder of the data files that
``write_files`` makes: an empty file, a file that is not JSON, records without an answer), and the
exact line on stderr (a string ending in ``...`` is a prefix). Every case must exit with 2, print that
one line and nothing else on stderr, no traceback, and stop before any model loads.
"""

from __future__ import annotations

from pathlib import Path

from sbr_bench import CONF_DIR

TOY = ["model=toy"]
DEFENSE_OPTIONS = sorted(p.stem for p in (Path(CONF_DIR) / "defense").glob("*.yaml"))  # conf/defense/*.yaml

CASES: list[tuple[str, list[str], str]] = [
    # wrong type
    ("wrong type: a learning rate that is not a number", [*TOY, "attack.lr=abc"], "attack.lr=abc must be a number"),
    ("wrong type: a fractional epoch count", [*TOY, "attack.epochs=2.5"], "attack.epochs=2.5 must be an integer"),
    (
        "wrong type: a flag that is not a boolean",
        [*TOY, "eval.before_attack=1"],
        "eval.before_attack=1 must be true or false",
    ),
    (
        "wrong type: a list where a number goes",
        [*TOY, "defense=lisa", "defense.rho=[1,2]"],
        "defense.rho=[1, 2] must be a number",
    ),
    # zero
    ("zero: a LoRA rank of 0", [*TOY, "adapter.r=0"], "adapter.r=0 must be > 0"),
    ("zero: an evaluation batch size of 0", [*TOY, "eval.batch_size=0"], "eval.batch_size=0 must be > 0"),
    ("zero: no SBR anchor", [*TOY, "defense=sbr", "defense.num_anchors=0"], "defense.num_anchors=0 must be > 0"),
    # negative
    ("negative: an epoch count", [*TOY, "attack.epochs=-1"], "attack.epochs=-1 must be > 0"),
    ("negative: SBR's lambda", [*TOY, "defense=sbr", "defense.lam=-1"], "defense.lam=-1 must be >= 0"),
    ("negative: Vaccine's radius", [*TOY, "defense=vaccine", "defense.rho=-2"], "defense.rho=-2 must be >= 0"),
    # out of range
    (
        "out of range: a poison ratio above 1",
        [*TOY, "attack.poison_ratio=1.5"],
        "attack.poison_ratio=1.5 is outside [0, 1]",
    ),
    (
        "out of range: a collapse threshold above 100 %",
        [*TOY, "eval.during_attack.collapse_threshold=150"],
        "eval.during_attack.collapse_threshold=150 is outside [0, 100]",
    ),
    (
        "out of range: a scheduler that does not exist",
        [*TOY, "attack.scheduler=step"],
        "attack.scheduler=step is not one of: constant, linear, cosine",
    ),
    (
        "out of range: a generation backend that does not exist",
        [*TOY, "eval.backend=vlm"],
        "eval.backend=vlm is not one of: hf, continuous, vllm",
    ),
    (
        "missing file: the interpreter of the vLLM backend",
        [*TOY, "eval.backend=vllm", "eval.vllm.python=/nonexistent/bin/python"],
        "eval.vllm.python=/nonexistent/bin/python is not a file; give an environment's python",
    ),
    (
        "out of range: an SBR reduction that does not exist",
        [*TOY, "defense=sbr", "defense.reduction=mean"],
        "defense.reduction=mean is not one of: elementwise_mean, paper_sum",
    ),
    # empty list
    (
        "empty list: SBR anchor prompts",
        [*TOY, "defense=sbr", "defense.prompts=[]"],
        "defense.prompts=[] must not be empty",
    ),
    (
        "empty list: the adapter's target modules",
        [*TOY, "adapter.target_modules=[]"],
        "adapter.target_modules=[] must be a string or must not be empty",
    ),
    # data files
    (
        "missing file",
        [*TOY, "data=local", "data.files.task_test=/nonexistent/sst2_test.json"],
        "data.files.task_test=/nonexistent/sst2_test.json: no such file",
    ),
    (
        "empty file",
        [*TOY, "data=local", "data.files.task_test={files}/empty.json"],
        "{files}/empty.json: the file holds no records",
    ),
    (
        "a file that is not JSON",
        [*TOY, "data=local", "data.files.task_test={files}/notes.json"],
        "{files}/notes.json:1: not valid JSON (Expecting value)",
    ),
    (
        "records without an answer",
        [*TOY, "data=local", "data.files.task_train={files}/no_answer.jsonl"],
        '{files}/no_answer.jsonl: record 1: record has neither "conversations" nor "instruction" and "output"',
    ),
    # models
    (
        "a model path that does not exist",
        ["model=llama3_8b_instruct", "model.name_or_path=/nonexistent/Llama-3.1-8B-Instruct"],
        "model.name_or_path=/nonexistent/Llama-3.1-8B-Instruct: no such folder; give a local copy of the model or "
        "its hub id",
    ),
    (
        "a hub model that is not in the cache, offline",
        ["model=llama3_8b_instruct"],
        "model.name_or_path=meta-llama/Llama-3.1-8B-Instruct is not in the local hub cache ...",
    ),
    # plugins, options, keys
    (
        "an option that does not exist",
        ["defense=sbrr"],
        "defense=sbrr: no such option; valid options: " + ", ".join(DEFENSE_OPTIONS),
    ),
    ("a key that does not exist", [*TOY, "attack.lrr=1"], "attack.lrr: no such key; the keys of attack are: ..."),
    (
        "a key added to a defense that does not take it",
        [*TOY, "defense=sbr", "+defense.lamm=3"],
        "defense.lamm: no such key; the keys of defense are: anchor_pass, anchor_seed, ga_scaling, lam, num_anchors, "
        "prompts, reduction, share_prefix",
    ),
    (
        "a bad value in the last job of a sweep",
        ["-m", *TOY, "attack.lr=1e-3,3e-4,abc"],
        "attack.lr=abc must be a number (job 2 of the sweep: model=toy attack.lr=abc)",
    ),
    (
        "--config-dir that does not exist",
        ["--config-dir", "/nonexistent/conf", *TOY],
        "--config-dir /nonexistent/conf: no such folder",
    ),
    # checked against the data, before the model loads
    (
        "more samples than the attack pool holds",
        [*TOY, "attack.num_samples=5000"],
        "attack.num_samples=5000 at poison_ratio=0.1 needs 500 harmful samples but the attack pool holds 120; "
        "lower num_samples or poison_ratio",
    ),
    (
        "more anchors than the anchor pool holds",
        [*TOY, "defense=sbr", "defense.num_anchors=50"],
        "defense.num_anchors=50 but the anchor pool holds 20 prompts; use num_anchors <= 20",
    ),
    (
        "an alignment-stage defense without an alignment stage",
        [*TOY, "align=none", "defense=vaccine"],
        "Vaccine acts in the alignment stage, which align=none skips; add align=sft",
    ),
    (
        "two defenses of one stage",
        [*TOY, "defense=sbr", "defense@stack=l2sp"],
        "defense and stack both act in the attack stage; stack defenses of different stages "
        "(e.g. defense=sbr defense@stack=vaccine)",
    ),
    (
        "a rule across two keys, in a constructor",
        [*TOY, "defense=safety_mix", "defense.num_samples=100"],
        "defense.num_samples=100 and defense.ratio=0.5: set exactly one "
        "(defense.num_samples=null for the ratio, defense.ratio=null for the count)",
    ),
    (
        "an alignment-stage defense's protocol on a model without alignment",
        ["model=llama3_8b_instruct", "defense=booster"],
        "align: the job has no alignment stage (align=none, the instruct models' pick), but its defense acts "
        "there and its paper protocol sets the alignment recipe; add align=sft",
    ),
    (
        "the continued adapter without an alignment adapter",
        [*TOY, "align=none", "adapter=continue"],
        "adapter.kind=continue trains the alignment's LoRA adapter, but align=none has no alignment stage; "
        "use adapter=lora (a fresh LoRA) or an align option with a LoRA adapter (align=sft)",
    ),
    (
        "a distance cap in merged space on the continued adapter",
        [*TOY, "align=sft", "adapter=continue", "attack=distance_cap"],
        "attack.distance_cap.space=merged measures a fresh LoRA's update (B starts at 0), but adapter=continue "
        "starts from the alignment's LoRA; use attack.distance_cap.space=params",
    ),
    (
        "full fine-tuning of bf16 weights",
        [*TOY, "model.dtype=bfloat16", "adapter=full"],
        "adapter.kind=full on bfloat16 weights (precision 32-true): AdamW updates of lr ~1e-5 are below the "
        "bf16 rounding step of the weights and are lost; load the model in fp32 (model.dtype=float32) and "
        "train in trainer.precision=bf16-mixed (fp32 master weights)",
    ),
    # the worst-case search
    (
        "a defended worst-case search without the undefended reference",
        ["-m", "experiment=attacker_grid_toy", "defense=sbr"],
        "search.reference_fa is null, but defense=sbr is not the undefended model whose default attack sets the "
        "utility floor; run the search for defense=none first and pass its job 0's FA (printed when that search "
        "ends): search.reference_fa=<FA> (job 0 of the sweep: ...",
    ),
    (
        "a utility floor above 1",
        [*TOY, "search=attacker", "search.utility_floor=1.5"],
        "search.utility_floor=1.5 must be <= 1",
    ),
    (
        "two warmups",
        [*TOY, "attack.warmup_ratio=0.1", "attack.warmup_steps=5"],
        "attack: warmup_ratio and warmup_steps are both set; set one of them to 0",
    ),
]

# On a machine without CUDA only (skipped where one is present).
NO_CUDA_CASE = (
    "a GPU trainer on a machine without one",
    [*TOY, "trainer=gpu"],
    "trainer.accelerator=gpu but this machine has no CUDA device; use trainer=cpu or trainer=auto",
)


# Where the optuna extra is absent only (CI installs it; its message is also tested in test_launchers.py).
NO_OPTUNA_CASE = (
    "a sweeper whose extra is not installed",
    ["-m", *TOY, "hydra/sweeper=optuna"],
    "hydra/sweeper=optuna needs the optuna extra; install it with: pip install -e '.[optuna]' (in the repository) "
    "or pip install 'sbr-bench[optuna]'",
)

NO_VLLM_CASE = (
    "a generation backend whose package is not installed",
    [*TOY, "eval.backend=vllm"],
    "eval.backend=vllm needs the vllm package: pip install -e '.[vllm]' (a GPU machine), or "
    "eval.vllm.python=<the python of an environment that has vllm>",
)


def write_files(folder: Path) -> None:
    """The broken data files the cases point at."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.json").write_text("")
    (folder / "notes.json").write_text("these are my notes, not JSON\n")
    (folder / "no_answer.jsonl").write_text('{"instruction": "Classify: great film"}\n')


def matches(line: str, expected: str) -> bool:
    """The stderr line is ``sbr-bench: error: <expected>`` (``...`` at the end: a prefix)."""
    want = f"sbr-bench: error: {expected}"
    return line.startswith(want[:-3]) if want.endswith("...") else line == want
