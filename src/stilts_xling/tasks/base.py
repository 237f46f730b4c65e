"""What a task is: one declarative `TaskSpec`; behaviour lives in its family.

A family (classification, multiple choice, tagging, span QA, retrieval) is one object with the same five
methods for every task in it: featurize examples, build a head, run the head (loss + logits), turn
logits into per-example predictions, and score predictions against gold. Tasks never subclass anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import torch
from torch import nn

from ..config import TrainConfig


@dataclass(frozen=True)
class FileSource:
    """Where the original download lives under `<data_dir>/<folder>/`, split by split.

    Paths may contain `{lang}` (the XTREME language code) and `{lang3}` (ISO 639-3, Tatoeba)."""

    folder: str
    splits: dict[str, str]
    reader: str  # a key of readers.READERS
    hint: str  # how to get the files; shown when one is missing


@dataclass(frozen=True)
class HubSource:
    """The same data on the Hugging Face hub: `datasets.load_dataset(path, name, split=...)`.

    `fields` maps the family's normalized field names to hub column names; `name` and split names
    may contain `{lang}`."""

    path: str
    name: Optional[str] = None
    splits: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    id_prefix: Optional[str] = None  # keep only rows whose id starts with this ({lang} allowed)
    label_names: Optional[tuple[str, ...]] = None  # names for integer labels, when the hub's differ from ours
    # A branch, tag or commit to load: datasets >= 4 runs no loading scripts, so a repo whose main branch is
    # still script-only loads from its parquet conversion (a pull-request ref) instead.
    revision: Optional[str] = None

    def revision_kwargs(self) -> dict:
        return {"revision": self.revision} if self.revision else {}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str
    description: str
    phases: tuple[str, ...]  # "intermediate" and/or "xtreme"
    metric: str  # the dev metric used for model selection (a key of the family's score dict)
    files: Optional[FileSource] = None
    hub: Optional[HubSource] = None
    languages: tuple[str, ...] = ("en",)
    labels: tuple[str, ...] = ()
    num_choices: int = 0
    scorer: str = "accuracy"  # a key of the family's scorer table
    train: TrainConfig = field(default_factory=TrainConfig)  # the paper's defaults for this task
    # XTREME targets are trained on another task's English data (XNLI <- MNLI, XQuAD <- SQuAD v1.1);
    # model selection then uses that task's dev split.
    train_task: Optional[str] = None
    dev_split: str = "dev"
    # Other tasks whose training data is added to this one's (ANLI+ = ANLI + MNLI + SNLI, Nie et al. 2020).
    extra_train: tuple[str, ...] = ()
    # The label set is built from the training data (CCG supertags): the family's fit_labels(spec, examples).
    labels_from_train: bool = False
    # Tagging: which sub-token of a word carries its tag. "first" (XTREME run_tag, jiant udpos/panx), or
    # "first_with_text", jiant's CCG alignment: a word's lone word-boundary token (XLM-R's "▁" before ",")
    # holds no characters, so the tag goes on the next sub-token.
    tag_piece: str = "first"
    # Splits some languages lack (UD has no dev data for kk, th, tl, yo): split -> languages.
    missing_splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    group: str = ""  # XTREME group: classification, structured prediction, qa, retrieval


class Family(Protocol):
    """A family that trains. A family may instead define `run_target(ctx, spec, encoder_source)`, which
    replaces fine-tuning in phase 3 (retrieval embeds with the encoder as it is). A family that trains but
    scores every language against one shared pool (dual_encoder) may define `evaluate_languages(ctx, spec,
    model, tokenizer, hp, todo)`, yielding (language, split, examples, metrics, predictions) for each
    (language, split) of `todo`; phase 3 then calls it instead of evaluating one language at a time."""

    name: str

    def featurize(self, spec: TaskSpec, examples: list[dict], tokenizer: Any, max_length: int) -> list[dict]:
        """One or more features per example, each a dict of python ints/lists, with an `example_index`."""

    def make_head(self, spec: TaskSpec, hidden_size: int) -> nn.Module: ...

    def forward(self, head: nn.Module, hidden: torch.Tensor, pooled: torch.Tensor,
                batch: dict[str, torch.Tensor]) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """(loss or None when the batch has no labels, logits)."""

    def predict(self, spec: TaskSpec, examples: list[dict], features: list[dict], logits: list[Any]) -> dict[str, Any]:
        """Per-example predictions keyed by example id; `logits[i]` belongs to `features[i]`."""

    def score(self, spec: TaskSpec, predictions: dict[str, Any], examples: list[dict], lang: str) -> dict[str, float]:
        ...


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions (-100 = none), in float32. A batch without any
    label gives 0, not NaN, and nothing here waits for the GPU (no host sync)."""
    flat = labels.reshape(-1)
    total = torch.nn.functional.cross_entropy(logits.float().reshape(flat.numel(), -1), flat, ignore_index=-100,
                                              reduction="sum")
    return total / (flat != -100).sum().clamp(min=1)


def pooled_head(hidden_size: int, num_outputs: int, dropout: float = 0.1) -> nn.Module:
    """RoBERTa's classification head shape (dense + tanh between dropouts), on the pooled vector."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, hidden_size), nn.Tanh(),
                         nn.Dropout(dropout), nn.Linear(hidden_size, num_outputs))
