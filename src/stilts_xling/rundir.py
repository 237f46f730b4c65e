"""A run directory: the `Context` every phase works in, and `start`, which opens one.

`start` locks the directory (two runs never write one), compares the config with the one saved there
(a real difference refuses with a diff; `--new-run` archives the old run first; keys left at their
defaults do not count), picks how the processes share the model (DDP or FSDP, parallel.py) and seeds.
"""
from __future__ import annotations

import contextlib
import difflib
import fcntl
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as config_mod
from .config import ExperimentConfig
from .config_checks import fsdp_problems
from .files import write_atomic
from .results import versions
from .tracking import open_tracker

log = logging.getLogger(__name__)


@dataclass
class Context:
    cfg: ExperimentConfig
    run_dir: Path
    config_hash: str
    accelerator: Any
    lock: Any = None
    fsdp: bool = False  # the model is sharded across the processes (parallel.py)

    @property
    def results(self) -> Path:
        return self.run_dir / "results.jsonl"

    def close(self) -> None:
        _unlock(self.lock)
        self.lock = None
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            # Left to interpreter exit, the process group's C++ threads can be torn down while still joinable,
            # and a rank that finished cleanly aborts ("terminate called without an active exception").
            dist.destroy_process_group()

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def tracker(self, phase: str):
        """The configured tracker for one training phase (main process only), closed afterwards."""
        kind = self.cfg.tracking if self.accelerator.is_main_process else "none"
        tracker = open_tracker(kind, self.run_dir, phase, config_mod.to_dict(self.cfg))
        try:
            yield tracker
        finally:
            tracker.close()

    def row_base(self, phase: str, task: str, **extra: Any) -> dict:
        return {"run": self.run_dir.name, "phase": phase, "intermediate": list(self.cfg.intermediate.tasks),
                "task": task, **extra, "seed": self.cfg.seed, "model": self.cfg.model.name,
                "config_hash": self.config_hash, "versions": versions()}


def start(cfg: ExperimentConfig, new_run: bool = False) -> Context:
    """Lock the run dir and save the resolved config; a different saved config refuses with a diff."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if cfg.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    import torch

    launched_fsdp = _launched_with_fsdp()  # before the Accelerator reads the launcher's environment
    from accelerate.utils import DistributedDataParallelKwargs

    # Multi-task training steps one task at a time, so the other heads get no gradient in that step; DDP
    # must be told to look for unused parameters or its gradient reduction never completes.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=len(cfg.intermediate.tasks) > 1)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
    fsdp = _use_fsdp(cfg, launched_fsdp)
    if accelerator.num_processes > 1 and cfg.speed.token_budget:
        # Each process would split its own share by tokens, into counts that can differ between processes,
        # and DDP's per-forward buffer broadcasts would then wait for each other forever.
        raise ValueError("speed.token_budget cannot be used with several processes yet (each would split its "
                         "share of a micro batch into its own number of pieces); set speed.token_budget: null and "
                         "choose micro_batch_size instead")
    main = accelerator.is_main_process  # under DDP (torchrun/accelerate launch) rank 0 owns the run dir
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(run_dir) if main else None
    text = config_mod.dump_yaml(cfg)
    saved = run_dir / "config.yaml"
    saved_text = saved.read_text(encoding="utf-8") if saved.exists() else text
    if saved_text != text and config_mod.same_config(saved_text, cfg) and not new_run:
        # Only keys at their defaults differ (a newer version added some): the same run, same hash.
        log.info("%s: the saved config differs only in keys left at their defaults; updating it", saved)
    elif saved_text != text:
        if not new_run:
            _unlock(lock)
            diff = "".join(difflib.unified_diff(saved_text.splitlines(True), text.splitlines(True),
                                                "saved config.yaml", "this config"))
            raise ValueError(f"{run_dir} holds a run with a different config:\n{diff}\nUse another run_dir, or "
                             "pass --new-run to move the old run into <run_dir>/archive/ and start afresh.")
        if main:
            _archive(run_dir)
    accelerator.wait_for_everyone()  # every rank compared against the old config before rank 0 replaces it
    if main:
        write_atomic(saved, text)
    set_seed(cfg.seed)
    return Context(cfg, run_dir, config_mod.config_hash(cfg), accelerator, lock, fsdp)


def _launched_with_fsdp() -> bool:
    """Whether accelerate launch asked for FSDP (--use_fsdp, or FSDP in its config file); DeepSpeed is
    refused. The loop shards with FSDP2 itself, so the flag is taken out of the environment: accelerate
    would build its own FSDP plugin from it (which also refuses CPU-only machines), and transformers would
    load pretrained weights on rank 0 only (accelerate's default --fsdp_cpu_ram_efficient_loading)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ValueError("DeepSpeed is not supported: its engine owns the optimizer step, gradient accumulation, "
                         "clipping and checkpoints, which this loop does itself. For ZeRO-3-style sharding use "
                         "FSDP (distributed.strategy=fsdp, or accelerate launch --use_fsdp); else plain DDP")
    return os.environ.pop("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _use_fsdp(cfg: ExperimentConfig, launched_fsdp: bool) -> bool:
    """distributed.strategy against the launcher. One process outside a process group has nothing to shard."""
    import torch.distributed as dist

    strategy = cfg.distributed.strategy
    if launched_fsdp:
        if strategy == "ddp":
            raise ValueError("launched with accelerate launch --use_fsdp, but distributed.strategy is ddp; drop "
                             "--use_fsdp, or set distributed.strategy to fsdp or auto")
        strategy = "fsdp"
    if strategy != "fsdp":
        return False
    problems = fsdp_problems(cfg)
    if problems:  # load_config refuses these for strategy fsdp; here they meet --use_fsdp
        raise ValueError("FSDP cannot run with these speed options:\n  " + "\n  ".join(problems))
    if not (dist.is_available() and dist.is_initialized()):
        log.info("distributed.strategy fsdp in a single process: nothing to shard, training the model whole")
        return False
    return True


def _lock(run_dir: Path) -> Any:
    """An exclusive lock held for the life of the process: two runs never write one run dir."""
    handle = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        raise ValueError(f"{run_dir} is in use by {owner}; wait for it to finish or use another run_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _unlock(handle: Any) -> None:
    """Release and close a lock _lock took (None: this rank holds none)."""
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _archive(run_dir: Path) -> None:
    """Move everything of the previous run (not the lock) into archive/<timestamp>/: nothing is lost."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = run_dir / "archive" / stamp
    for n in itertools.count(2):  # two --new-run in one second
        try:
            dest.mkdir(parents=True)
            break
        except FileExistsError:
            dest = run_dir / "archive" / f"{stamp}-{n}"
    for item in run_dir.iterdir():
        if item.name not in ("archive", ".lock"):
            item.rename(dest / item.name)
    print(f"previous run moved to {dest}")
