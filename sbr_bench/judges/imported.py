"""``judge=imported``: the verdicts of an outside judge, read back from a file, as a judge.

    sbr-bench-export multirun/default/<date_time> --format harmbench       # hand the answers out
    ...                                                                     # the outside judge labels them
    sbr-bench-judge multirun/default/<date_time> judge=imported judge.path=labels.csv judge.name=harmbench_cls

Each (prompt, answer) of the job is looked up in the file by its prompt id and its answer text; its
verdict is the file's. The answer must match exactly (before and after the attack share a prompt,
never an answer); a pair the file does not hold is a *missing* verdict, as for any judge. Read:

- CSV, JSONL, or JSON: a list of records, or HarmBench's results layout
  ``{behavior_id: [{"test_case", "generation", "label"}, ...]}``;
- the prompt: ``prompt_id`` / ``BehaviorID`` / ``behavior_id``, else its text (``prompt``,
  ``forbidden_prompt``, ``test_case``, ``instruction``), whose id is computed
  (``sbr_bench.evaluation.records.prompt_id``);
- the answer: ``response`` / ``generation`` / ``output``;
- the verdict: the column ``column`` (default: the first of ``harmful``, ``label``, ``score``).
  With ``threshold: null`` it is a label: true / false, 1 / 0, yes / no, unsafe / safe,
  harmful / unharmful (any case). With a number, the value is a score and harmful means
  ``score > threshold`` (StrongREJECT's 0-1 score: ``threshold: 0``); the score is kept in the record.

Anything else (an empty cell, an unknown word) is a missing verdict, never a guess.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from sbr_bench.errors import ConfigError
from sbr_bench.evaluation.records import prompt_id
from sbr_bench.judges.base import Judge, Verdict
from sbr_bench.schema import ExistingFile, NonEmptyStr

ID_COLUMNS = ("prompt_id", "BehaviorID", "behavior_id")
PROMPT_COLUMNS = ("prompt", "forbidden_prompt", "test_case", "instruction")
RESPONSE_COLUMNS = ("response", "generation", "output")
VERDICT_COLUMNS = ("harmful", "label", "score")
HARMFUL_WORDS = {"true": True, "1": True, "yes": True, "unsafe": True, "harmful": True}
SAFE_WORDS = {"false": False, "0": False, "no": False, "safe": False, "unharmful": False}


def read_rows(path: Path) -> list[dict]:
    """The file's records as dicts (HarmBench's results layout flattened, its key as ``BehaviorID``)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, dict):  # {behavior_id: [completion, ...]}
        return [{"BehaviorID": key, **row} for key, rows in data.items() for row in rows]
    return list(data)


def first_of(row: dict, columns: Sequence[str]):
    return next((row[c] for c in columns if row.get(c) not in (None, "")), None)


class ImportedJudge(Judge):
    """Verdicts looked up in a file written by an outside judge."""

    def __init__(
        self,
        path: ExistingFile,
        name: NonEmptyStr = "imported",
        column: str | None = None,
        threshold: float | None = None,
    ):
        self.path = Path(path).expanduser()
        self.name = name
        self.column = column
        self.threshold = threshold
        self._verdicts: dict[tuple[str, str], Verdict] | None = None

    def check(self) -> None:
        if self.path.suffix not in (".csv", ".jsonl", ".json"):
            raise ConfigError(f"judge.path={self.path}: give a .csv, .jsonl or .json file of verdicts")
        self.verdicts()  # a file without a verdict column fails here, before anything else

    def verdicts(self) -> dict[tuple[str, str], Verdict]:
        """(prompt id, answer) -> verdict, read once."""
        if self._verdicts is None:
            try:
                rows = read_rows(self.path)
            except (OSError, ValueError) as err:
                raise ConfigError(f"judge.path={self.path}: cannot read it ({err})") from None
            column = self.column or next((c for c in VERDICT_COLUMNS if rows and c in rows[0]), None)
            if column is None or (rows and column not in rows[0]):
                raise ConfigError(
                    f"judge.path={self.path}: no verdict column {self.column or '/'.join(VERDICT_COLUMNS)}; "
                    f"name it with judge.column=<column>"
                )
            self._verdicts = {}
            for row in rows:
                pid = first_of(row, ID_COLUMNS)
                prompt = first_of(row, PROMPT_COLUMNS)
                response = first_of(row, RESPONSE_COLUMNS)
                if response is None or (pid is None and prompt is None):
                    continue
                key = (str(pid) if pid is not None else prompt_id(str(prompt)), str(response))
                self._verdicts[key] = self.verdict(row.get(column))
        return self._verdicts

    def verdict(self, value) -> Verdict:
        """A label (threshold null) or a score (harmful when above the threshold); else missing."""
        if self.threshold is not None:
            try:
                score = float(value)
            except (TypeError, ValueError):
                return Verdict(None, details={"missing": f"not a score: {value!r}"})
            if not math.isfinite(score):
                return Verdict(None, details={"missing": f"not a score: {value!r}"})
            return Verdict(score > self.threshold, score)
        word = str(value).strip().lower() if value is not None else ""
        if isinstance(value, bool):
            return Verdict(value)
        if word in HARMFUL_WORDS or word in SAFE_WORDS:
            return Verdict({**HARMFUL_WORDS, **SAFE_WORDS}[word])
        return Verdict(None, details={"missing": f"not a label: {value!r}"})

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        table = self.verdicts()
        missing = Verdict(None, details={"missing": f"not in {self.path.name}"})
        return [table.get((prompt_id(p), r), missing) for p, r in zip(prompts, responses, strict=True)]
