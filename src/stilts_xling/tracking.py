"""Experiment tracking: losses, learning rate, throughput and dev metrics as scalars per step.

TensorBoard by default (event files under `<run_dir>/tensorboard/<phase>`; `tensorboard --logdir RUN_DIR`);
Weights & Biases when `tracking: wandb`; nothing with `tracking: none`. A missing TensorBoard package only
turns the default off with a warning: tracking must never stop a run."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger(__name__)


class Tracker:
    def __init__(self, write: Optional[Callable[[dict, int], None]] = None,
                 close: Optional[Callable[[], None]] = None):
        self._write, self._close = write, close

    def log(self, scalars: dict[str, float], step: int) -> None:
        if self._write is not None:
            self._write(scalars, step)

    def close(self) -> None:
        if self._close is not None:
            self._close()


def _tensorboard(log_dir: Path, config: dict, name: str) -> Tracker:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard, or tracking: none)")
        return Tracker()
    writer = SummaryWriter(log_dir=str(log_dir))

    def write(scalars: dict, step: int) -> None:
        for key, value in scalars.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    return Tracker(write, writer.close)


def _wandb(log_dir: Path, config: dict, name: str) -> Tracker:
    try:
        import wandb
    except ImportError:
        raise ValueError("tracking: wandb needs the wandb package (pip install wandb)") from None
    run = wandb.init(dir=str(log_dir), config=config, name=name, reinit=True)
    return Tracker(lambda scalars, step: run.log(scalars, step=step), run.finish)


_BACKENDS = {"tensorboard": _tensorboard, "wandb": _wandb, "none": lambda *args: Tracker()}


def open_tracker(kind: str, run_dir: Path, phase: str, config: dict) -> Tracker:
    log_dir = Path(run_dir) / "tensorboard" / phase
    return _BACKENDS[kind](log_dir, config, f"{Path(run_dir).name}/{phase}")


def flatten_metrics(metrics: dict[str, dict[str, float]], prefix: str = "dev") -> dict[str, float]:
    """{task: {metric: value}} -> {"dev/task/metric": value}, the names the dashboards show."""
    return {f"{prefix}/{task}/{name}": value for task, values in metrics.items() for name, value in values.items()}
