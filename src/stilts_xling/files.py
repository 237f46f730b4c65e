"""Writing files so that a failure names the file and never leaves a torn one behind.

Python's OSError for a full disk carries no file name (`[Errno 28] No space left on device`), and a write
interrupted half-way leaves half a file that a resumed run would trust. Every small output (configs,
markers, predictions, histories, reports) goes through `write_atomic`: a temp file, then a rename."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

FULL_DISK_HINT = "free space and rerun the same command: finished work (results.jsonl, checkpoints) is kept"


@contextlib.contextmanager
def naming(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """Re-raise an OSError from the block with `path` as its file name; remove `tmp` when it fails."""
    try:
        yield
    except OSError as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if err.filename and err.errno != errno.ENOSPC:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None


def write_atomic(path: Path, text: str | bytes) -> Path:
    """`path` holds either its old content or all of `text`, never part of it."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with naming(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())  # a node that dies after the rename must not leave an empty done-marker
        tmp.replace(path)
    return path


def describe(err: OSError) -> str:
    """One line for the CLI: what failed, on which file, and for a full disk what to do."""
    if err.errno == errno.ENOSPC:
        where = f" while writing {err.filename}" if err.filename else ""
        return f"the disk is full{where}; {FULL_DISK_HINT}"
    return str(err)
