"""The core data types: a training or judging ``Pair`` and the disjoint ``Pools`` of a job's data.

Every data source (bundled, hub, local files) builds ``Pools``; the stages, the defenses and the
evaluation read them. The pools and what uses each are listed in ``sbr_bench.data.bundled``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sbr_bench.data.tasks import SENTIMENT, Task


@dataclass(frozen=True)
class Pair:
    """A prompt and the answer the model is trained towards (or judged against)."""

    prompt: str
    response: str
    category: str = ""


@dataclass(frozen=True)
class Pools:
    """Every disjoint pool of the data, the benign task (prompts' answer check) and, optionally, a
    ready-made attack set.

    ``attack_fixed``: the user's own fine-tuning set, already mixed (``data=local attack=<file>``);
    when given, the attack uses it as-is instead of drawing n samples at ratio p.
    ``harm_categories``: the harm category of each ``eval_harmful`` prompt where the data has one
    (the bundled file's 12 categories; BeaverTails' flagged ones of its 14), kept in the generation
    records for exports and per-category analysis; it never changes a score.
    """

    align_harmful: list[Pair]
    align_compliant: list[Pair]
    align_benign: list[Pair]
    attack_harmful: list[Pair]
    anchors: list[str]
    eval_harmful: list[str]
    eval_benign: list[str]
    task_train: list[Pair]
    task_test: list[Pair]
    task: Task = SENTIMENT
    attack_fixed: list[Pair] | None = None
    harm_categories: dict[str, str] = field(default_factory=dict)

    @property
    def task_labels(self) -> tuple[str, ...]:
        """The task's label set (empty for open-ended tasks)."""
        return self.task.labels
