"""The benchmark's workloads: XLM-R Large (or a tiny twin) from an explicit config, synthetic features
shaped like the paper's tasks, and the heads they train (bench.py runs them).

- mnli: sentence pairs, lognormal lengths with mean 46 tokens; the Trainer pads to 128 (run_glue).
- squad: question + context windows of up to 384 tokens (mean 176); the Trainer pads to 384 (run_qa).
- hellaswag: 4 choices of context + ending (mean 84 tokens each); the Trainer pads each batch to its
  longest choice (run_swag's DataCollatorForMultipleChoice).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Optional

import torch

XLMR_LARGE = dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                  bos_token_id=0, eos_token_id=2)
XLMR_TINY = dict(XLMR_LARGE, vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=128)


@dataclass(frozen=True)
class Shape:
    kind: str  # classification | span | choice
    mean: float  # mean tokens per sequence (lognormal)
    sigma: float
    max_length: int
    trainer_width: Optional[int]  # the Trainer pads to this; None = the longest in its batch
    choices: int = 1
    labels: int = 0


SHAPES = {
    "mnli": Shape("classification", 46, 0.5, 128, 128, labels=3),
    "squad": Shape("span", 176, 0.45, 384, 384),
    "hellaswag": Shape("choice", 84, 0.35, 256, None, choices=4),
}


def _config(tiny: bool, **extra: Any):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(**(XLMR_TINY if tiny else XLMR_LARGE), **extra)


# ---------------------------------------------------------------------------------------------------
# Synthetic data.


def _lognormal(rng: random.Random, mean: float, sigma: float, lo: int, hi: int) -> int:
    return min(hi, max(lo, round(rng.lognormvariate(math.log(mean) - sigma ** 2 / 2, sigma))))


def synthetic_features(shape: Shape, n: int, vocab: int, seed: int = 0) -> list[dict]:
    """Features in the families' format: <s> random ids </s>, never the pad id (1)."""
    rng = random.Random(seed)

    def ids(length: int) -> list[int]:
        return [0] + [rng.randrange(3, vocab) for _ in range(length - 2)] + [2]

    out = []
    for i in range(n):
        if shape.kind == "choice":
            context = ids(_lognormal(rng, shape.mean * 0.7, shape.sigma, 6, shape.max_length - 2))[:-1]
            rows = [(context + ids(_lognormal(rng, shape.mean * 0.3, shape.sigma, 3, 64))[1:])[:shape.max_length - 1]
                    + [2] for _ in range(shape.choices)]
            out.append({"input_ids": rows, "labels": rng.randrange(shape.choices), "example_index": i})
            continue
        row = ids(_lognormal(rng, shape.mean, shape.sigma, 8, shape.max_length))
        if shape.kind == "span":
            start = rng.randrange(1, len(row) - 1)
            end = min(len(row) - 2, start + rng.randrange(0, 30))
            out.append({"input_ids": row, "start_positions": start, "end_positions": end, "example_index": i})
        else:
            out.append({"input_ids": row, "labels": rng.randrange(shape.labels), "example_index": i})
    return out


def _rows(feature: dict) -> list[list[int]]:
    ids = feature["input_ids"]
    return ids if ids and isinstance(ids[0], list) else [ids]


# ---------------------------------------------------------------------------------------------------
# Task heads: the registry's own tasks (stilts's real path); minimal stand-ins should one be missing.

_REAL_TASKS = {"classification": "mnli", "span": "squad_v1", "choice": "hellaswag"}


class _SpanFamily:
    name = "bench_span"

    def make_head(self, spec, hidden_size):
        return torch.nn.Linear(hidden_size, 2)

    def forward(self, head, hidden, pooled, batch):
        logits = head(hidden).float()
        logits = logits.masked_fill(~batch["attention_mask"].bool().view(logits.shape[:2]).unsqueeze(-1), -1e4)
        start, end = logits.unbind(-1)
        loss = (torch.nn.functional.cross_entropy(start, batch["start_positions"])
                + torch.nn.functional.cross_entropy(end, batch["end_positions"])) / 2
        return loss, logits


class _ChoiceFamily:
    name = "bench_choice"

    def make_head(self, spec, hidden_size):
        from .tasks.base import pooled_head

        return pooled_head(hidden_size, 1)

    def forward(self, head, hidden, pooled, batch):
        logits = head(pooled).view(batch["input_ids"].size(0), -1)
        return torch.nn.functional.cross_entropy(logits.float(), batch["labels"]), logits


def _spec(shape: Shape):
    from .tasks import registry
    from .tasks.base import TaskSpec

    try:
        spec = registry.get_task(_REAL_TASKS[shape.kind])
        if spec.family in registry.FAMILIES:
            return spec
    except KeyError:
        pass
    family = _SpanFamily() if shape.kind == "span" else _ChoiceFamily()
    registry.FAMILIES.setdefault(family.name, family)
    return TaskSpec(name=f"bench_{shape.kind}", family=family.name, description="benchmark", phases=(),
                    metric="loss", num_choices=shape.choices)
