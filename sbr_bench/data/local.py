"""Data from local files given by path (``data=local``).

Two record formats, each as a JSON file (a list of records) or a JSONL file (one record a line),
the two formats of the research code (SBR's chat files; Vaccine / Lisa / Booster's Alpaca files):

- chat "conversations": ``{"conversations": [{"role": "user", "content": ...}, {"role": "assistant",
  "content": ...}]}`` (the SBR code's files); ShareGPT's ``{"from": "human" | "gpt", "value": ...}``
  turns are read too. One user turn and the assistant turn after it; a leading system turn is
  refused rather than dropped in silence.
- Alpaca: ``{"instruction", "input", "output"}`` (Stanford Alpaca, Vaccine / Lisa / Booster);
  ``input`` may be empty or absent. The prompt is ``task_prompt(instruction, input)``, which the
  Alpaca prompt format renders as the protocol's Instruction / Input blocks.

The format is told per record by its keys. A bad file fails with one line naming the path and the
record number (1-based: the line for JSONL, the list position for JSON).

``load_pools`` starts from the bundled pools and replaces every pool given a file: a user brings
what they have (a ready-mixed attack file, a task's test split, harmful pairs) and the rest stays
the bundled data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from typing_extensions import NotRequired, TypedDict

from sbr_bench.data import bundled
from sbr_bench.data.bundled import BenignSizes, HarmfulSizes, TaskSizes
from sbr_bench.data.pools import Pair, Pools
from sbr_bench.data.tasks import make_task, task_prompt
from sbr_bench.errors import ConfigError
from sbr_bench.schema import ExistingFile, NonEmptyStr, keys_checked

log = logging.getLogger(__name__)

USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt")


def read_records(path: str | Path) -> list[tuple[int, Any]]:
    """(record number, record) of a JSON list file or a JSONL file (told by the first character)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such data file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        return list(enumerate(records, 1))
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    return out


def conversation_pair(turns: Any) -> tuple[str, str]:
    """(user content, assistant content) of a one-exchange conversation; ValueError says what is wrong."""
    if not isinstance(turns, list):
        raise ValueError("conversations is not a list of turns")
    roles, texts = [], []
    for turn in turns:
        if not isinstance(turn, dict):
            raise ValueError("a turn is not an object")
        role, text = turn.get("role", turn.get("from")), turn.get("content", turn.get("value"))
        if role is None or text is None:
            raise ValueError('a turn lacks "role"/"content" (or "from"/"value")')
        roles.append(str(role).lower())
        texts.append(str(text))
    if len(roles) != 2 or roles[0] not in USER_ROLES or roles[1] not in ASSISTANT_ROLES:
        raise ValueError(f"expected one user turn then one assistant turn, got roles {roles}")
    return texts[0], texts[1]


def to_pair(record: Any) -> Pair:
    """A conversations or Alpaca record as a Pair; ValueError says what is missing."""
    if not isinstance(record, dict):
        raise ValueError("record is not a JSON object")
    if "conversations" in record:
        prompt, response = conversation_pair(record["conversations"])
        return Pair(prompt, response, str(record.get("category", "")))
    if "instruction" in record and "output" in record:
        prompt = task_prompt(str(record["instruction"]), str(record.get("input") or ""))
        return Pair(prompt, str(record["output"]), str(record.get("category", "")))
    raise ValueError('record has neither "conversations" nor "instruction" and "output"')


def read_pairs(path: str | Path) -> list[Pair]:
    """Every record of a conversations / Alpaca file (JSON or JSONL) as a Pair."""
    pairs = []
    for number, record in read_records(path):
        try:
            pairs.append(to_pair(record))
        except ValueError as err:
            raise ConfigError(f"{Path(path).expanduser()}: record {number}: {err}") from None
    if not pairs:
        raise ConfigError(f"{path}: the file holds no records")
    return pairs


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a file (records as in ``read_pairs``, or ``{"prompt": ...}`` records)."""
    prompts = []
    for number, record in read_records(path):
        if isinstance(record, dict) and "prompt" in record:
            prompts.append(str(record["prompt"]))
            continue
        try:
            prompts.append(to_pair(record).prompt)
        except ValueError as err:
            raise ConfigError(f"{Path(path).expanduser()}: record {number}: {err}") from None
    return prompts


PAIR_POOLS = ("align_harmful", "align_compliant", "align_benign", "attack_harmful", "task_train", "task_test")
PROMPT_POOLS = ("anchors", "eval_harmful", "eval_benign")


@keys_checked
class LocalTask(TypedDict):
    """``data.task``: the task whose answer check scores FA, and its options."""

    name: NonEmptyStr
    strict: NotRequired[bool]  # sst2: a refusal keyword or both labels count wrong (SBR's rule)


@keys_checked
class BundledSizes(TypedDict, total=False):
    """``data.bundled_sizes``: the bundled fallback's split seed and pool sizes (as in data=bundled)."""

    split_seed: int
    harmful: HarmfulSizes
    benign: BenignSizes
    task: TaskSizes


@keys_checked
class LocalFiles(TypedDict, total=False):
    """``data.files``: a file per pool to replace (null keeps the bundled pool)."""

    task_test: ExistingFile | None
    task_train: ExistingFile | None
    attack_harmful: ExistingFile | None
    align_harmful: ExistingFile | None
    align_compliant: ExistingFile | None
    align_benign: ExistingFile | None
    anchors: ExistingFile | None
    eval_harmful: ExistingFile | None
    eval_benign: ExistingFile | None


def load_pools(
    task: NonEmptyStr | LocalTask = "sst2",
    attack: ExistingFile | None = None,
    files: LocalFiles | None = None,
    bundled_sizes: BundledSizes | None = None,
) -> Pools:
    """The bundled pools with every pool given a file replaced by that file's records.

    Args:
        task: the task whose answer check scores FA (``sst2`` or ``{"name": "sst2", "strict": false}``).
        attack: a ready-mixed attack file, used as-is (attack.num_samples / poison_ratio do not apply).
        files: pool name -> file (``task_test``, ``task_train``, ``attack_harmful``, ``align_harmful``,
            ``align_compliant``, ``align_benign``: pairs; ``anchors``, ``eval_harmful``, ``eval_benign``:
            prompts); ``null`` keeps the bundled pool.
        bundled_sizes: ``split_seed`` / ``harmful`` / ``benign`` / ``task`` of the bundled fallback.
    """
    options = {"name": task} if isinstance(task, str) else dict(task)
    chosen = make_task(options.pop("name"), **options)
    files = {k: v for k, v in (files or {}).items() if v}
    unknown = sorted(set(files) - set(PAIR_POOLS) - set(PROMPT_POOLS))
    if unknown:
        raise ConfigError(f"data.files.{unknown[0]}: no such pool; valid pools: {', '.join(PAIR_POOLS + PROMPT_POOLS)}")
    pools = bundled.load_pools(**(bundled_sizes or {}))
    replaced: dict[str, Any] = {"task": chosen}
    for name, path in files.items():
        replaced[name] = read_pairs(path) if name in PAIR_POOLS else read_prompts(path)
        log.info("data: %s <- %s (%d records)", name, path, len(replaced[name]))
    if attack:
        replaced["attack_fixed"] = read_pairs(attack)
        log.info("data: attack set <- %s (%d records, used as-is)", attack, len(replaced["attack_fixed"]))
    return dataclasses.replace(pools, **replaced)
