"""Atomic writes: a write that dies half-way leaves the old file (or none), never half a file."""

from __future__ import annotations

import json
import os

import pytest

from sbr_bench import alignment
from sbr_bench.context import JobContext
from sbr_bench.io import write_json_atomic, write_text_atomic


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"eval/harmful_score": 12.0})

    def dies(fd):
        raise KeyboardInterrupt  # e.g. the job is interrupted while the new text is being flushed

    monkeypatch.setattr(os, "fsync", dies)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(target, {"eval/harmful_score": 99.0, "more": "x" * 100_000})
    assert json.loads(target.read_text()) == {"eval/harmful_score": 12.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_first_write_that_fails_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "status.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_half_written_alignment_entry_is_never_served(tmp_path, monkeypatch):
    """Weights without meta.json (a store that died before its rename) count as absent: it is trained again."""
    entry = tmp_path / "aligned" / "abc"
    entry.mkdir(parents=True)
    (entry / "adapter").mkdir()  # weights written, meta.json not
    trained = []
    monkeypatch.setattr(alignment, "_train", lambda *a, **k: trained.append(a[5]) or ("model", {"align/cached": 0.0}))
    monkeypatch.setattr(alignment, "load_weights", lambda *a: pytest.fail("a half-written entry was loaded"))
    context = JobContext({}, None, None, {}, None, tmp_path, tmp_path)
    _, metrics = alignment.align(None, context, [], None, None, "abc")
    assert trained == [entry] and metrics["align/cached"] == 0.0
