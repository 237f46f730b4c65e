"""Sentence-pair regression (GLUE STS-B): one number from the pooled first token, mean squared error,
scored with Pearson and Spearman correlation (GLUE's single STS-B number is their mean).

Examples use the classification schema with a float label: {"id", "text_a", "text_b", "label"}.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .. import metrics
from ..config import TrainConfig
from .base import FileSource, HubSource, TaskSpec, pooled_head

# Unlabeled examples (test files) carry NaN, which no real score can be.
NO_LABEL = float("nan")


class RegressionFamily:
    name = "regression"

    def featurize(self, spec: TaskSpec, examples: list[dict], tokenizer: Any, max_length: int) -> list[dict]:
        firsts = [ex["text_a"] for ex in examples]
        seconds = [ex.get("text_b") for ex in examples]
        pair = seconds if any(s is not None for s in seconds) else None
        encoded = tokenizer(firsts, pair, truncation=True, max_length=max_length)["input_ids"]
        return [{"input_ids": ids, "example_index": i,
                 "labels": NO_LABEL if ex["label"] is None else float(ex["label"])}
                for i, (ids, ex) in enumerate(zip(encoded, examples))]

    def make_head(self, spec: TaskSpec, hidden_size: int) -> torch.nn.Module:
        return pooled_head(hidden_size, 1)

    def forward(self, head, hidden, pooled, batch):
        scores = head(pooled).squeeze(-1)
        labels = batch.get("labels")
        if labels is None:
            return None, scores
        known = ~torch.isnan(labels)
        if not bool(known.any()):
            return None, scores
        return F.mse_loss(scores.float()[known], labels[known].float()), scores

    def predict(self, spec, examples, features, logits):
        return {examples[f["example_index"]]["id"]: float(torch.as_tensor(score).reshape(-1)[0])
                for f, score in zip(features, logits)}

    def score(self, spec, predictions, examples, lang):
        gold = [ex for ex in examples if ex["label"] is not None]
        return metrics.pearson_spearman([predictions[ex["id"]] for ex in gold], [float(ex["label"]) for ex in gold])

    def hub_example(self, spec: TaskSpec, row: dict, index: int) -> dict:
        """A hub row through `spec.hub.fields`; the GLUE hub writes -1 for the unlabeled test split."""
        ex = {key: row[column] for key, column in spec.hub.fields.items()}
        ex.setdefault("text_b", None)
        label = ex.get("label")
        ex["label"] = None if label is None or label == -1 else float(label)
        ex["id"] = str(ex.get("id", index))
        return ex


FAMILY = RegressionFamily()

TASKS = [
    TaskSpec(
        name="stsb", family="regression", phases=("xtreme",), metric="pearson_spearman", group="glue",
        description="GLUE STS-B: sentence similarity 0-5 (regression); Pearson/Spearman, English only",
        files=FileSource(folder="glue", reader="glue_stsb_tsv", splits={"train": "STS-B/train.tsv",
                                                                          "dev": "STS-B/dev.tsv"},
                         hint="download https://dl.fbaipublicfiles.com/glue/data/STS-B.zip and unzip it into {dir}"),
        hub=HubSource(path="nyu-mll/glue", name="stsb", splits={"train": "train", "dev": "validation"},
                      fields={"id": "idx", "text_a": "sentence1", "text_b": "sentence2", "label": "label"}),
        # RoBERTa's GLUE recipe for the small sets (Liu et al. 2019, appendix: lr 1e-5..3e-5, batch 16, 10 epochs).
        train=TrainConfig(epochs=10, lr=1e-5, batch_size=16, max_length=128),
    ),
]
