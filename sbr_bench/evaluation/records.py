"""The generation records of ``generations.jsonl``: what each one holds beyond the prompt and answer.

Every record has ``stage`` (before_attack / after_attack), ``pool`` (harmful / benign / task),
``prompt``, ``response``, the pool's verdict fields and ``truncated`` (the answer hit the token
limit). Written with the job, every record also gains what other tools need to join, judge and
share the answers:

- ``prompt_id``: a stable id of the prompt text, the first 16 hex digits of its SHA-256. The same
  prompt has the same id in every job, model and stage, so answers of two jobs (or the verdicts of
  an outside judge) join on it. BeaverTails has no ids of its own.
- ``category``: the harm category of a harmful prompt where the data has one (the bundled file's
  12; BeaverTails' flags, comma-separated); empty otherwise.
- ``generator``: the job's run name (``sbr-hft-toy-s0``: defense, attack, model, the sweep's
  varying overrides, seed; as the W&B run is named), the name leaderboards give a set of outputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping


def prompt_id(prompt: str) -> str:
    """A stable id of a prompt: the first 16 hex digits of the SHA-256 of its UTF-8 text."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def describe(record: dict, categories: Mapping[str, str], generator: str) -> dict:
    """The record with ``prompt_id`` after its pool, ``category`` and ``generator`` at the end."""
    out = {"stage": record.get("stage"), "pool": record.get("pool"), "prompt_id": prompt_id(record["prompt"])}
    out.update((k, v) for k, v in record.items() if k not in out)
    out["category"] = categories.get(record["prompt"], "") if record.get("pool") == "harmful" else ""
    out["generator"] = generator
    return out
