"""Reading an offline W&B run file (``run-<id>.wandb``) in tests, without the network or wandb's internals.

The file is wandb's ":W&B" header followed by LevelDB-log-format records (32 KiB blocks, each
record a 7-byte header - checksum, length, type - and a chunk; FIRST/MIDDLE/LAST chunks join),
each record a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, LAST = 1, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, chunks, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if left < HEADER or (kind == 0 and length == 0):  # block trailer / padding
            pos += left
            continue
        chunks += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


def run_config(path: Path) -> dict:
    """The run's config as the W&B server would show it (initial config plus every update)."""
    config = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            items = record.run.config.update
        elif kind == "config":
            items = record.config.update
        else:
            continue
        config.update({item.key: json.loads(item.value_json) for item in items})
    return config


def run_name(path: Path) -> str:
    """The run's display name, as the W&B UI shows it."""
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run.display_name
    raise AssertionError(f"{path} holds no run record")


def run_tags(path: Path) -> list[str]:
    """The run's tags, as set when it started."""
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return list(record.run.tags)
    raise AssertionError(f"{path} holds no run record")


def run_summary(path: Path) -> dict:
    """The run's summary (every update, the last value of each key winning)."""
    summary = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update})
    return summary
