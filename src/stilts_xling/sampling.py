"""Multi-task samplers: which task the next optimizer step trains on (jiant's task-per-batch scheme)."""
from __future__ import annotations

import math
from typing import Optional

from .config import SamplerConfig


def task_probabilities(sizes: dict[str, int], cfg: SamplerConfig) -> dict[str, float]:
    """p(task) for each sampler kind; `sizes` are training-example counts.

    proportional: p ~ n (jiant ProportionalMultiTaskSampler); capped: p ~ min(n, cap)
    (SpecifiedProbMultiTaskSampler with train_examples_cap); temperature: p ~ min(n, cap)^(1/T);
    uniform: equal."""
    capped = {t: min(n, cfg.cap) if cfg.cap else n for t, n in sizes.items()}
    weights = {
        "proportional": lambda: dict(sizes),
        "capped": lambda: capped,
        "temperature": lambda: {t: n ** (1.0 / cfg.temperature) for t, n in capped.items()},
        "uniform": lambda: {t: 1.0 for t in sizes},
    }[cfg.kind]()
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def total_steps(sizes: dict[str, int], epochs: dict[str, float], batch: dict[str, int], cfg: SamplerConfig,
                max_steps: Optional[int] = None) -> int:
    """Σ_task epochs * ceil(n / batch), with n capped for the capped/temperature samplers: jiant's
    SimpleAPIMultiTaskConfigurator (and its single-task configurator) count whole batches per epoch.
    A fractional epoch count rounds up to a whole step."""
    cap = cfg.cap if cfg.kind in ("capped", "temperature") else None
    steps = sum(math.ceil(epochs[t] * math.ceil((min(n, cap) if cap else n) / batch[t])) for t, n in sizes.items())
    return min(steps, max_steps) if max_steps else max(steps, 1)
