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
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
