"""The data bundled with sbr-bench, split deterministically into disjoint pools.

Three files, written for this project (nothing is downloaded):

- ``harmful.jsonl``: harmful requests in 12 harm categories, each with a refusal and a compliant
  answer. Compliant answers agree and outline generic steps without any operational detail: the
  benchmark measures whether a model stops refusing, not what it knows.
- ``benign.jsonl``: benign instructions with helpful answers, including "near-miss" prompts that
  only sound edgy (XSTest idea) - used to keep and to measure helpfulness (over-refusal).
- ``sentiment.jsonl``: labelled review sentences, the user's benign fine-tuning task.

Pools (sizes from ``conf/data/bundled.yaml``):

=================  =============================================  ===============================
pool               content                                        used by
=================  =============================================  ===============================
align_harmful      harmful prompt -> refusal                      alignment stage
align_compliant    the same prompts -> compliant answer           alignment-stage defenses that
                                                                  need harmful data (RepNoise,
                                                                  Booster)
align_benign       benign prompt -> helpful answer                alignment stage
attack_harmful     harmful prompt -> compliant answer             the attack's poisoned samples
anchors            harmful prompts                                SBR anchor pool
eval_harmful       harmful prompts                                harmful score
eval_benign        benign prompts                                 over-refusal
task_train         sentiment prompt -> label                      the attack's benign samples
task_test          sentiment prompt -> label                      fine-tune accuracy
=================  =============================================  ===============================

Splits are stratified (harmful prompts by category, benign ones by topic, sentences by label), so
every pool covers every category, and they depend only on ``split_seed``.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict

from sbr_bench.data.pools import Pair, Pools
from sbr_bench.errors import ConfigError
from sbr_bench.schema import NonNegativeInt, keys_checked

# The SST-2 instruction of the HFT protocol (Vaccine, Lisa, Booster and SBR code).
SENTIMENT_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative."
SENTIMENT_LABELS = ("positive", "negative")


def bundled_file(name: str) -> Path:
    """Path of a bundled data file (shipped as package data)."""
    return Path(str(resources.files("sbr_bench.data").joinpath("bundled", name)))


def read_jsonl(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """Read a JSONL file; say which record is broken and why when one is."""
    records = []
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such data file")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            missing = [k for k in required if k not in record]
            if missing:
                raise ConfigError(f"{path}:{lineno}: record lacks field(s) {', '.join(missing)}")
            records.append(record)
    return records


def stratified_order(records: list[dict], key: Callable[[dict], str], seed: int) -> list[dict]:
    """Shuffle within each stratum, then deal the strata round robin.

    Any prefix of the result is balanced across strata, so cutting it into consecutive pools
    gives every pool the same mix.
    """
    strata: dict[str, list[dict]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r["id"]):
        strata[key(record)].append(record)
    for name, items in strata.items():
        random.Random(f"{seed}:{name}").shuffle(items)
    ordered: list[dict] = []
    names = sorted(strata)
    for i in range(max(len(v) for v in strata.values())):
        ordered.extend(strata[name][i] for name in names if i < len(strata[name]))
    return ordered


def cut(records: list, sizes: dict[str, int], what: str) -> dict[str, list]:
    """Consecutive slices of the given sizes; the rest goes to the slice sized ``None``."""
    fixed = sum(n for n in sizes.values() if n is not None)
    if fixed > len(records):
        raise ConfigError(
            f"data: the {what} pools ask for {fixed} items but only {len(records)} exist; lower data.{what}.* sizes"
        )
    out, start = {}, 0
    for name, n in sizes.items():
        n = len(records) - fixed if n is None else n
        out[name] = records[start : start + n]
        start += n
    return out


def sentiment_prompt(sentence: str) -> str:
    """The protocol's SST-2 prompt for one sentence."""
    return f"{SENTIMENT_INSTRUCTION}\nInput: {sentence}"


@keys_checked
class HarmfulSizes(TypedDict):
    """``data.harmful``: the harmful prompts held out for each use; the rest is the attack pool."""

    eval: NonNegativeInt
    anchors: NonNegativeInt
    align: NonNegativeInt


@keys_checked
class BenignSizes(TypedDict):
    """``data.benign``: the benign prompts held out for over-refusal; the rest align."""

    eval: NonNegativeInt


@keys_checked
class TaskSizes(TypedDict):
    """``data.task``: the sentiment sentences held out for FA; the rest is the task's training split."""

    test: NonNegativeInt


def load_pools(
    split_seed: int = 0,
    harmful: HarmfulSizes | None = None,
    benign: BenignSizes | None = None,
    task: TaskSizes | None = None,
) -> Pools:
    """Load the bundled files and cut them into disjoint pools.

    Args:
        split_seed: seed of the stratified shuffle; fixed by default so that every job of every
            sweep sees the same pools.
        harmful: sizes of the ``eval``, ``anchors`` and ``align`` harmful pools; the rest is the
            attack pool.
        benign: size of the ``eval`` benign pool; the rest is used for alignment.
        task: size of the ``test`` split of the sentiment task; the rest is the training split.
    """
    harmful = dict(harmful or {"eval": 100, "anchors": 20, "align": 120})
    benign = dict(benign or {"eval": 100})
    task = dict(task or {"test": 200})

    h = read_jsonl(bundled_file("harmful.jsonl"), ("id", "category", "prompt", "refusal", "compliant"))
    b = read_jsonl(bundled_file("benign.jsonl"), ("id", "topic", "prompt", "response"))
    s = read_jsonl(bundled_file("sentiment.jsonl"), ("id", "sentence", "label"))

    hp = cut(
        stratified_order(h, lambda r: r["category"], split_seed),
        {
            "eval": harmful["eval"],
            "anchors": harmful["anchors"],
            "align": harmful["align"],
            "attack": None,
        },
        "harmful",
    )
    bp = cut(
        stratified_order(b, lambda r: r["topic"], split_seed),
        {"eval": benign["eval"], "align": None},
        "benign",
    )
    sp = cut(
        stratified_order(s, lambda r: r["label"], split_seed),
        {"test": task["test"], "train": None},
        "task",
    )

    def task_pairs(records: list[dict]) -> list[Pair]:
        return [Pair(sentiment_prompt(r["sentence"]), r["label"], r["label"]) for r in records]

    return Pools(
        align_harmful=[Pair(r["prompt"], r["refusal"], r["category"]) for r in hp["align"]],
        align_compliant=[Pair(r["prompt"], r["compliant"], r["category"]) for r in hp["align"]],
        align_benign=[Pair(r["prompt"], r["response"], r["topic"]) for r in bp["align"]],
        attack_harmful=[Pair(r["prompt"], r["compliant"], r["category"]) for r in hp["attack"]],
        anchors=[r["prompt"] for r in hp["anchors"]],
        eval_harmful=[r["prompt"] for r in hp["eval"]],
        eval_benign=[r["prompt"] for r in bp["eval"]],
        task_train=task_pairs(sp["train"]),
        task_test=task_pairs(sp["test"]),
        harm_categories={r["prompt"]: r["category"] for r in hp["eval"]},
    )


def all_texts() -> list[str]:
    """Every text of the bundled files (the toy tokenizer's vocabulary is built from them)."""
    texts = [SENTIMENT_INSTRUCTION, "Input:", *SENTIMENT_LABELS]
    for name, fields in (
        ("harmful.jsonl", ("prompt", "refusal", "compliant")),
        ("benign.jsonl", ("prompt", "response")),
        ("sentiment.jsonl", ("sentence",)),
    ):
        for record in read_jsonl(bundled_file(name), fields):
            texts.extend(record[f] for f in fields)
    return texts
