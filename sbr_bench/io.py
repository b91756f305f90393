"""Atomic file writes (a reader sees the old file, the new file, or none - never half of one) and the
cache lock that lets concurrent jobs compute a shared entry once."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Pretty JSON, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> None:
    """One JSON object per line, written atomically."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_json(path: str | Path) -> Any:
    """Parse a JSON file."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@contextmanager
def exclusive(path: str | Path, what: str = "this cache entry") -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``path`` for the block (other processes asking wait).

    Jobs of a parallel sweep (joblib, SLURM, Ray) that need the same cache entry take turns: the
    first computes it, the others wait and then find it. The lock is ``flock`` on a file next to the
    entry, so it works across processes on one machine and on shared file systems that support
    POSIX locks; the kernel releases it when a process dies, so a killed job never blocks the rest.
    """
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"  # hidden: a cache folder lists its entries only
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another job computing %s (%s)", what, path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
