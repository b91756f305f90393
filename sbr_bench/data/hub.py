"""The HFT protocol's datasets from the Hugging Face hub, or from a local copy of the same files.

Every dataset is read by one call, ``datasets.load_dataset(<builder>, data_files=<root>/<file>)``,
where ``<root>`` is ``hf://datasets/<repo>`` or the folder given as ``data.<source>.path`` (a
``huggingface-cli download --repo-type dataset <repo> --local-dir <folder>`` copy, or any folder
holding the same files): the hub and a local folder take the same code path. The files are named
explicitly (not through the repositories' loading scripts, which ``datasets`` >= 4 no longer runs):

===========  ============================  =======================================  ==============================
source       repository                    files (split)                            columns
===========  ============================  =======================================  ==============================
beavertails  PKU-Alignment/BeaverTails     round0/30k/{train,test}.jsonl.gz         prompt, response, category
                                           (30k_train, 30k_test; dataset card)      (14 flags), is_safe
sst2         stanfordnlp/sst2              data/{train,validation}-*.parquet        sentence, label (0 neg, 1 pos)
agnews       fancyzhx/ag_news              data/{train,test}-*.parquet              text, label (0-3)
gsm8k        openai/gsm8k                  main/{train,test}-*.parquet (``main``)   question, answer
alpaca_eval  tatsu-lab/alpaca_eval         alpaca_eval.json (``alpaca_eval``/eval)  instruction, output
===========  ============================  =======================================  ==============================

Pools (the protocol's selection: the first n in file order; sizes from ``conf/data/beavertails_*.yaml``):

- ``align_harmful``: the first ``align`` ``is_safe`` pairs of 30k_train (Vaccine: 2000), BeaverTails'
  safe answers to (mostly harmful) prompts. They are the alignment's "refusals", but an ``is_safe``
  answer is often a safe answer rather than a refusal (Booster's code reads a refusal file that is
  not published; ``data=local`` takes such a file as ``align_harmful``);
- ``attack_harmful``: the first ``attack`` unsafe pairs of 30k_train (the poisoned samples);
- ``anchors``: the next ``anchors`` distinct unsafe prompts, none of them an attack or evaluation prompt
  (SBR: anchors from a pool disjoint from the attacker's data);
- ``align_compliant``: the harmful data of RepNoise / Booster. ``pairing: same_prompt`` (default, the
  official codes' paired data): an unsafe answer to the same prompt as an ``align_harmful`` pair, for
  the first ``align_compliant`` alignment prompts that have one outside the attack pool, so
  ``defense.mask=paired_diff`` works; ``pairing: next``: the next ``align_compliant`` unsafe pairs
  after the anchors (other prompts);
- ``eval_harmful``: the first ``eval`` unsafe prompts of 30k_test (Booster code; Lisa: 1000, Vaccine: 500);
- ``task_train`` / ``task_test``: the benign task's training and test splits (first ``train`` / ``test``);
- ``eval_benign`` and ``align_benign``: the bundled benign instructions (BeaverTails has no benign
  prompts to measure over-refusal with; the bundled ones include XSTest-style near misses).

Training pairs whose prompt is also an evaluation prompt are dropped (``disjoint: true``): BeaverTails
repeats prompts across its QA pairs, and an evaluation prompt must never be trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from typing_extensions import NotRequired, TypedDict

from sbr_bench.data import bundled
from sbr_bench.data.bundled import BenignSizes
from sbr_bench.data.pools import Pair, Pools
from sbr_bench.data.tasks import AGNEWS_LABELS, SST2_LABELS, agnews_prompt, gsm8k_prompt, gsm8k_target, make_task
from sbr_bench.data.tasks import sst2_prompt as sst2_prompt_text
from sbr_bench.errors import ConfigError
from sbr_bench.schema import ExistingFolder, NonNegativeInt, PositiveInt, keys_checked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A hub dataset: its repository, the ``datasets`` builder of its files, split -> file pattern, columns."""

    repo: str
    builder: str
    files: dict[str, str]
    columns: tuple[str, ...]


SOURCES = {
    "beavertails": Source(
        "PKU-Alignment/BeaverTails",
        "json",
        {"30k_train": "round0/30k/train.jsonl.gz", "30k_test": "round0/30k/test.jsonl.gz"},
        ("prompt", "response", "category", "is_safe"),
    ),
    "sst2": Source(
        "stanfordnlp/sst2",
        "parquet",
        {"train": "data/train-*.parquet", "validation": "data/validation-*.parquet"},
        ("sentence", "label"),
    ),
    "agnews": Source(
        "fancyzhx/ag_news",
        "parquet",
        {"train": "data/train-*.parquet", "test": "data/test-*.parquet"},
        ("text", "label"),
    ),
    "gsm8k": Source(
        "openai/gsm8k",
        "parquet",
        {"train": "main/train-*.parquet", "test": "main/test-*.parquet"},
        ("question", "answer"),
    ),
    "alpaca_eval": Source("tatsu-lab/alpaca_eval", "json", {"eval": "alpaca_eval.json"}, ("instruction", "output")),
}


def load_split(
    source: str, split: str, path: str | None = None, cache_dir: str | None = None, setting: str = ""
) -> list[dict]:
    """The rows of one split, from the hub or from the local folder ``path`` (same call, other root).

    Any failure (no network, offline mode, missing file, unreadable file) is one ConfigError line that
    names the dataset and the setting (``setting``, e.g. ``data.task``) that points at a local copy.
    """
    import datasets

    spec = SOURCES[source]
    setting = setting or f"data.{source}"
    if path is not None and not Path(path).expanduser().is_dir():
        raise ConfigError(f"{setting}.path={path}: no such folder (it should hold {spec.files[split]})")
    root = str(Path(path).expanduser()) if path is not None else f"hf://datasets/{spec.repo}"
    where = f"{root}/{spec.files[split]}"
    try:
        rows = datasets.load_dataset(spec.builder, data_files={split: where}, split=split, cache_dir=cache_dir)
    except Exception as err:  # whatever went wrong, the user needs the same one line
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{setting}: cannot read {spec.repo} ({where}: {reason}); without hub access, download it "
            f"(huggingface-cli download --repo-type dataset {spec.repo} --local-dir DIR) and set {setting}.path=DIR"
        ) from None
    missing = [c for c in spec.columns if c not in rows.column_names]
    if missing:
        raise ConfigError(
            f"{setting}: {where} lacks column(s) {', '.join(missing)} (has {', '.join(rows.column_names)})"
        )
    return rows.to_list()


def first(rows: list, n: int | None, what: str) -> list:
    """The first ``n`` items in file order (all when ``n`` is None); too few is a ConfigError."""
    if n is not None and n > len(rows):
        raise ConfigError(f"data: {what} asks for {n} items but only {len(rows)} exist; lower it")
    return rows if n is None else rows[:n]


def flagged(category: dict | None) -> str:
    """The names of BeaverTails' true harm flags, comma-separated."""
    return ",".join(sorted(k for k, v in (category or {}).items() if v))


# --- the benign tasks: (train pairs, test pairs) ---------------------------------------------------


def sst2_pairs(rows: list[dict]) -> list[Pair]:
    return [Pair(sst2_prompt_text(r["sentence"]), SST2_LABELS[r["label"]], SST2_LABELS[r["label"]]) for r in rows]


def agnews_pairs(rows: list[dict]) -> list[Pair]:
    return [Pair(agnews_prompt(r["text"]), AGNEWS_LABELS[r["label"]], AGNEWS_LABELS[r["label"]]) for r in rows]


def gsm8k_pairs(rows: list[dict]) -> list[Pair]:
    return [Pair(gsm8k_prompt(r["question"]), gsm8k_target(r["answer"])) for r in rows]


def alpaca_pairs(rows: list[dict]) -> list[Pair]:
    return [Pair(r["instruction"], r["output"], str(r.get("dataset", ""))) for r in rows]


# name -> (pairs builder, training split, test split); SST-2's test split has no labels: validation is the test.
TASK_SPLITS = {
    "sst2": (sst2_pairs, "train", "validation"),
    "agnews": (agnews_pairs, "train", "test"),
    "gsm8k": (gsm8k_pairs, "train", "test"),
    "alpaca_eval": (alpaca_pairs, "eval", "eval"),
}


def task_pools(name: str, path: str | None, train: int | None, test: int | None, cache_dir) -> tuple[list, list]:
    """The task's training and test pairs (AlpacaEval: one split, the first ``train`` then the next ``test``)."""
    if name not in TASK_SPLITS:
        raise ConfigError(f"data.task.name={name}: no hub task of that name; valid: {', '.join(sorted(TASK_SPLITS))}")
    build, train_split, test_split = TASK_SPLITS[name]
    if train_split == test_split:
        rows = load_split(name, train_split, path, cache_dir, "data.task")
        train_rows = first(rows, train, f"data.task.train ({name})")
        test_rows = first(rows[len(train_rows) :], test, f"data.task.test ({name}, after the training items)")
        return build(train_rows), build(test_rows)
    train_rows = first(load_split(name, train_split, path, cache_dir, "data.task"), train, f"data.task.train ({name})")
    test_rows = first(load_split(name, test_split, path, cache_dir, "data.task"), test, f"data.task.test ({name})")
    return build(train_rows), build(test_rows)


# --- BeaverTails ---------------------------------------------------------------------------------


def beavertails_pools(cfg: dict, cache_dir) -> dict:
    """align_harmful, attack_harmful, anchors, align_compliant and eval_harmful from BeaverTails-30k."""
    path = cfg.get("path")
    test = load_split("beavertails", "30k_test", path, cache_dir)
    eval_prompts = first([r["prompt"] for r in test if not r["is_safe"]], cfg["eval"], "data.beavertails.eval")
    # A prompt's categories: those flagged on any of its unsafe answers (BeaverTails labels each answer).
    flags: dict[str, set[str]] = {}
    for r in test:
        if not r["is_safe"]:
            flags.setdefault(r["prompt"], set()).update(filter(None, flagged(r["category"]).split(",")))
    train = load_split("beavertails", "30k_train", path, cache_dir)
    held_out = set(eval_prompts) if cfg.get("disjoint", True) else set()
    kept = [r for r in train if r["prompt"] not in held_out]
    if len(kept) < len(train):
        log.info("data: %d BeaverTails training pairs dropped (prompt evaluated)", len(train) - len(kept))
    safe = [Pair(r["prompt"], r["response"], flagged(r["category"])) for r in kept if r["is_safe"]]
    unsafe = [Pair(r["prompt"], r["response"], flagged(r["category"])) for r in kept if not r["is_safe"]]

    attack = first(unsafe, cfg["attack"], "data.beavertails.attack")
    rest = unsafe[len(attack) :]
    excluded = {p.prompt for p in attack} | set(eval_prompts)
    anchors: list[str] = []
    for pair in rest:  # distinct prompts, in file order, disjoint from attack and evaluation
        if len(anchors) == cfg["anchors"]:
            break
        if pair.prompt not in excluded:
            anchors.append(pair.prompt)
            excluded.add(pair.prompt)
    if len(anchors) < cfg["anchors"]:
        raise ConfigError(f"data.beavertails.anchors={cfg['anchors']} but only {len(anchors)} distinct prompts remain")
    anchor_set = set(anchors)
    after_anchors = [p for p in rest if p.prompt not in anchor_set]
    align = first(safe, cfg["align"], "data.beavertails.align")
    if cfg["pairing"] == "same_prompt":
        compliant = same_prompt_answers(align, after_anchors, cfg["align_compliant"])
    else:
        compliant = first(after_anchors, cfg["align_compliant"], "data.beavertails.align_compliant")
    return {
        "align_harmful": align,
        "attack_harmful": attack,
        "anchors": anchors,
        "align_compliant": compliant,
        "eval_harmful": eval_prompts,
        "harm_categories": {p: ",".join(sorted(flags.get(p, ()))) for p in eval_prompts},
    }


def same_prompt_answers(align: list[Pair], unsafe: list[Pair], n: int) -> list[Pair]:
    """An unsafe answer to each of the first ``n`` distinct alignment prompts that has one, in pool order.

    BeaverTails holds several answers per prompt: the first unsafe one (file order, never an attack
    pair or an anchor prompt: ``unsafe`` is what remains after those) pairs with the alignment pool's
    safe answer, the paired data of RepNoise and Booster (same prompt, safe and harmful answer).
    """
    answers: dict[str, Pair] = {}
    for pair in unsafe:
        answers.setdefault(pair.prompt, pair)
    seen: set[str] = set()
    paired = []
    for pair in align:
        if pair.prompt in answers and pair.prompt not in seen:
            seen.add(pair.prompt)
            paired.append(answers[pair.prompt])
    if n > len(paired):
        raise ConfigError(
            f"data.beavertails.align_compliant={n} but only {len(paired)} of the {len(align)} alignment prompts have "
            "an unsafe answer outside the attack pool; lower it, raise data.beavertails.align, or set "
            "data.beavertails.pairing=next"
        )
    return paired[:n]


@keys_checked
class BeaverTailsSettings(TypedDict):
    """``data.beavertails``: where BeaverTails is read from and how many pairs each pool takes."""

    path: ExistingFolder | None
    align: PositiveInt
    attack: PositiveInt
    anchors: NonNegativeInt
    align_compliant: NonNegativeInt
    pairing: Literal["same_prompt", "next"]
    eval: PositiveInt
    disjoint: bool


@keys_checked
class HubTaskSettings(TypedDict):
    """``data.task``: the benign task, where it is read from, its split sizes (null = all) and options."""

    name: Literal["sst2", "agnews", "gsm8k", "alpaca_eval"]
    path: ExistingFolder | None
    train: PositiveInt | None
    test: PositiveInt | None
    strict: NotRequired[bool]  # sst2: a refusal keyword or both labels count wrong (SBR's rule)


def load_pools(
    beavertails: BeaverTailsSettings,
    task: HubTaskSettings,
    benign: BenignSizes | None = None,
    cache_dir: str | None = None,
) -> Pools:
    """Pools of the HFT protocol: BeaverTails for harm, a benign task, the bundled benign instructions.

    Args:
        beavertails: ``path`` (null = the hub) and the pool sizes ``align``, ``attack``, ``anchors``,
            ``align_compliant``, ``eval``; ``disjoint`` drops training pairs whose prompt is evaluated.
        task: ``name`` (sst2, agnews, gsm8k, alpaca_eval), ``path``, sizes ``train`` / ``test``
            (null = all) and the task's options (``sst2``: ``strict``).
        benign: ``eval``, the number of bundled benign prompts for over-refusal (the rest align).
        cache_dir: the ``datasets`` cache (null = its default, ``~/.cache/huggingface/datasets``).
    """
    options = dict(task)
    name, path = options.pop("name"), options.pop("path", None)
    train, test = options.pop("train", None), options.pop("test", None)
    chosen = make_task(name, **options)
    harm = beavertails_pools(beavertails, cache_dir)
    task_train, task_test = task_pools(name, path, train, test, cache_dir)
    base = bundled.load_pools(benign=benign)
    log.info(
        "data: BeaverTails %d align / %d attack / %d anchors / %d eval; %s %d train / %d test",
        len(harm["align_harmful"]),
        len(harm["attack_harmful"]),
        len(harm["anchors"]),
        len(harm["eval_harmful"]),
        name,
        len(task_train),
        len(task_test),
    )
    return Pools(
        align_benign=base.align_benign,
        eval_benign=base.eval_benign,
        task_train=task_train,
        task_test=task_test,
        task=chosen,
        **harm,
    )
