"""Flat result rows in `<run_dir>/results.jsonl`: one per (phase, task, language, split, metric).

Appends are one `write` of whole lines under an exclusive lock, flushed and fsynced, so a crash or a
concurrent reader never sees half a row and nothing already written is touched."""
from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterable

from . import __version__
from .files import naming


def versions() -> dict[str, str]:
    import torch
    import transformers

    out = {"stilts_xling": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__}
    for name in ("accelerate", "datasets"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n" for row in rows)
    if not text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path), open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            # A torn last line (a crash mid-write) gets its newline first: glued to it, the new first row
            # would never parse, and a resumed run would redo that work on every rerun.
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    text = "\n" + text
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_ROW_IDENTITY = ("phase", "task", "language", "split", "metric", "config_hash", "seed")


def unrecorded(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` less those results.jsonl already holds (same phase, task, language, split, metric, config and
    seed): a run killed after writing a phase's rows but before marking the phase done writes them again."""
    have = {tuple(r.get(k) for k in _ROW_IDENTITY) for r in read_rows(path)}
    return [r for r in rows if tuple(r.get(k) for k in _ROW_IDENTITY) not in have]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All complete rows; a torn last line (a crash mid-write on another system) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def format_metrics(metrics: dict[str, float]) -> str:
    """"name=value, ..." with two decimals, as the phases print their scores."""
    return ", ".join(f"{k}={v:.2f}" for k, v in metrics.items())


def metric_rows(base: dict[str, Any], metrics: dict[str, float]) -> list[dict[str, Any]]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return [{**base, "metric": name, "value": round(float(value), 6), "timestamp": stamp}
            for name, value in metrics.items()]
