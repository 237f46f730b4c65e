"""Training checkpoints that survive `kill -9` at any instant.

A checkpoint is one file written as `<name>.tmp`, flushed to disk, then renamed over the old one: the
rename is atomic, so at every moment the path holds either the previous complete checkpoint or the new
complete one, never a torn file. A failed write (disk full) removes its temp file and leaves the previous
checkpoint untouched."""
from __future__ import annotations

import errno
import os
import pickle
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint could not be written or read; the message says which file and what to do."""


def save(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            writer = _Writer(f)
            try:
                torch.save(state, writer)
            except RuntimeError:
                # torch's zip writer turns the OSError of a failed write into "unexpected pos ..."
                if writer.error is None:
                    raise
                raise writer.error from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = "the disk is full" if err.errno == errno.ENOSPC else str(err)
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no earlier checkpoint exists"
        raise CheckpointError(f"could not save the checkpoint {path}: {reason}; {kept}. Free space (or fix the "
                              "cause) and rerun the same command to resume.") from None


class _Writer:
    """The file as torch.save sees it, keeping the OSError of a failed write that torch does not pass on."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def load(path: Path) -> Optional[dict[str, Any]]:
    """The saved state, or None when there is none. A leftover `.tmp` (a kill during a save) is ignored."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"the checkpoint {path} is unreadable ({err}); delete it to restart this phase "
                              "from scratch (results already in results.jsonl are kept)") from None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
