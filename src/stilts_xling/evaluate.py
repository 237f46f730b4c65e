"""Batched inference and scoring of one task on one split/language."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import collate, feature_length, length_grouped_batches
from .tasks.base import TaskSpec
from .tasks.registry import family_of


def autocast(device: torch.device, bf16: bool):
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(model: Any, task: str, features: list[dict], batch_size: int, device: torch.device,
                   pad_id: int, bf16: bool = True, desc: str = "", keep_labels: bool = False) -> list[torch.Tensor]:
    """Logits per feature (CPU, float32), trimmed to the feature's own length for token-level heads.

    Features are run sorted by length so padding is minimal; the result is in the input order. Labels are
    withheld from the model unless `keep_labels` (masked LM scores the gold token in the head, so that a
    250k-word vocabulary never leaves the device)."""
    was_training = model.training
    model.eval()
    lengths = [feature_length(f) for f in features]
    out: list[Any] = [None] * len(features)
    batches = length_grouped_batches(lengths, batch_size, shuffle=False)
    for idx in tqdm(batches, desc=desc or f"eval {task}", leave=False, disable=len(batches) < 5):
        batch = {k: v.to(device) for k, v in collate([features[i] for i in idx], pad_id).items()}
        if not keep_labels:
            batch.pop("labels", None)  # prediction only; the family scores against the examples
        with autocast(device, bf16):
            _, logits = model(task, batch)
        logits = logits.float().cpu()
        for row, i in enumerate(idx):
            out[i] = logits[row, :lengths[i]] if logits.dim() == 3 else logits[row]
    model.train(was_training)
    return out


def evaluate(model: Any, spec: TaskSpec, examples: list[dict], features: list[dict], lang: str,
             batch_size: int, device: torch.device, pad_id: int, bf16: bool = True) -> tuple[dict, dict]:
    """(metrics, predictions keyed by example id)."""
    family = family_of(spec)
    logits = predict_logits(model, spec.name, features, batch_size, device, pad_id, bf16, f"eval {spec.name} {lang}",
                            keep_labels=getattr(family, "scores_with_labels", False))
    predictions = family.predict(spec, examples, features, logits)
    return family.score(spec, predictions, examples, lang), predictions
