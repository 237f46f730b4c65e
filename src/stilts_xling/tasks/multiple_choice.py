"""Multiple choice (jiant MULTIPLE_CHOICE): every (context, choice) pair is encoded on its own, a shared
head scores its pooled vector with one number, and a softmax over the C scores picks the answer.

Pairing follows jiant's task files (`jiant/tasks/lib/{hellaswag,commonsenseqa,cosmosqa}.py`), whose
`prompt` becomes our first segment and each `choice_list` entry the second:
  HellaSwag      prompt = ctx_a,                     choice = ctx_b + " " + ending
  CommonsenseQA  prompt = question stem,             choice = answer text
  Cosmos QA      prompt = context + " " + question,  choice = answer text
and XTREME-R's `third_party/run_xcopa.py` for the XCOPA recipe:
  Social IQa     prompt = context + " " + question,  choice = answerA/B/C
  COPA, XCOPA    prompt = premise + " What was the " + question + "?" (question is "cause" or "effect")
The readers already put ctx_b in front of each ending and leave `context` or `question` empty where a
dataset lacks it, so one rule covers all: first = context and question joined by a space, the question
first put into the task's template from QUESTION_TEMPLATES (COPA's bare "cause"/"effect", which stays
English for every XCOPA language, as in XTREME-R).

Truncation: only the first segment is cut, from its left, so the question (Cosmos QA) and the end of the
context nearest the choice (HellaSwag) survive. jiant cuts the longer segment from its end, which for an
over-long Cosmos QA context drops the question; both agree whenever a pair fits (nearly always at 256).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from .. import metrics
from ..config import TrainConfig
from ..languages import XTREME_R_LANGUAGES
from .base import FileSource, HubSource, TaskSpec, cross_entropy, pooled_head


# Task name -> how its `question` field reads as a question; tasks not listed use it as it is.
QUESTION_TEMPLATES = {"copa": "What was the {}?", "xcopa": "What was the {}?"}


def first_segment(example: dict, template: str = "{}") -> str:
    question = template.format(example["question"]) if example["question"] else ""
    return " ".join(part for part in (example["context"], question) if part)


class MultipleChoiceFamily:
    name = "multiple_choice"

    def featurize(self, spec: TaskSpec, examples: list[dict], tokenizer: Any, max_length: int) -> list[dict]:
        for ex in examples:
            if len(ex["choices"]) != spec.num_choices:  # a batch is a [B, C, T] tensor: C must not vary
                raise ValueError(f"{spec.name}: example {ex['id']!r} has {len(ex['choices'])} choices, "
                                 f"the task has {spec.num_choices}; fix or drop that record")
        template = QUESTION_TEMPLATES.get(spec.name, "{}")
        firsts = [first_segment(ex, template) for ex in examples for _ in ex["choices"]]
        seconds = [choice for ex in examples for choice in ex["choices"]]
        flat = _encode_pairs(tokenizer, firsts, seconds, max_length)
        c = spec.num_choices
        return [{"input_ids": flat[i * c:(i + 1) * c],
                 "labels": ex["label"] if ex["label"] is not None else -100, "example_index": i}
                for i, ex in enumerate(examples)]

    def make_head(self, spec: TaskSpec, hidden_size: int) -> torch.nn.Module:
        return pooled_head(hidden_size, 1)

    def forward(self, head, hidden, pooled, batch):
        # pooled is [B*C, H] (model.py flattens the choices); one score per pair, then [B, C].
        logits = head(pooled).view(-1, batch["input_ids"].size(1))
        labels = batch.get("labels")
        if labels is None:  # prediction
            return None, logits
        return cross_entropy(logits, labels), logits

    def predict(self, spec, examples, features, logits):
        return {examples[f["example_index"]]["id"]: int(torch.as_tensor(row).argmax())
                for f, row in zip(features, logits)}

    def score(self, spec, predictions, examples, lang):
        gold = [ex for ex in examples if ex["label"] is not None]
        return metrics.accuracy([predictions[ex["id"]] for ex in gold], [ex["label"] for ex in gold])

    def hub_example(self, spec: TaskSpec, row: dict, index: int) -> dict:
        """A hub row in the multiple_choice schema, read through `spec.hub.fields`.

        Keys: context / question / id (columns, optional); choices (a list column, or several columns
        joined by commas: "answer0,answer1"); choice_prefix (a column put before every choice: HellaSwag's
        ctx_b); label (an index, possibly as a string, or a key looked up in the choice_keys column).
        Missing, empty or negative labels (the test splits) become None."""
        fields = spec.hub.fields

        def col(key: str) -> Any:
            return _column(row, fields[key]) if key in fields else None

        names = fields["choices"].split(",")
        choices = [str(_column(row, n)) for n in names] if len(names) > 1 else [str(c) for c in col("choices")]
        if col("choice_prefix"):
            choices = [f"{col('choice_prefix')} {c}".strip() for c in choices]
        label = col("label")
        if label is None or label == "" or (isinstance(label, int) and label < 0):
            label = None
        elif "choice_keys" in fields:
            label = list(col("choice_keys")).index(label)
        else:
            label = int(label)
        example_id = col("id")
        return {"id": str(index if example_id is None else example_id), "context": col("context") or "",
                "question": col("question") or "", "choices": choices, "label": label}


def _column(row: dict, path: str) -> Any:
    for part in path.split("."):  # nested hub columns: "choices.text"
        row = row[part]
    return row


def _encode_pairs(tokenizer: Any, firsts: list[str], seconds: list[str], max_length: int) -> list[list[int]]:
    """input_ids of each (first, second) pair, at most `max_length` long, cut on the first segment's left.

    "only_first" fails outright when a choice alone leaves no room for the context, so such pairs (only
    possible with a small max_length) fall back to "longest_first", which may shorten the choice too."""
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer(seconds, add_special_tokens=False)["input_ids"]]
    groups = {"only_first": [i for i, n in enumerate(lengths) if n < room],
              "longest_first": [i for i, n in enumerate(lengths) if n >= room]}
    out: list[Optional[list[int]]] = [None] * len(firsts)
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"  # tokenizer-wide setting; restored below
    try:
        for strategy, idx in groups.items():
            if idx:
                ids = tokenizer([firsts[i] for i in idx], [seconds[i] for i in idx], truncation=strategy,
                                max_length=max_length)["input_ids"]
                for i, row in zip(idx, ids):
                    out[i] = row
    finally:
        tokenizer.truncation_side = side
    return out


FAMILY = MultipleChoiceFamily()

_COPA_FIELDS = {"id": "idx", "context": "premise", "question": "question", "choices": "choice1,choice2",
                "label": "label"}

# Hyperparameters: the companion study's per-task search (facts.md 5), max length 256 as there.
# Batches are padded to their longest pair, so a lower cap would only truncate more, not run faster.
TASKS = [
    TaskSpec(
        name="hellaswag", family="multiple_choice", phases=("intermediate",), metric="accuracy",
        description="HellaSwag: pick the most plausible of 4 continuations (ActivityNet + WikiHow)",
        num_choices=4,
        files=FileSource(folder="hellaswag", reader="hellaswag_jsonl", splits={
            "train": "hellaswag_train.jsonl", "dev": "hellaswag_val.jsonl"},
            hint="download https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_train.jsonl "
                 "and .../hellaswag_val.jsonl into {dir}"),
        # The repo's main branch is still its loading script; pull request #7 holds the parquet conversion
        # (same columns).
        hub=HubSource(path="Rowan/hellaswag", splits={"train": "train", "dev": "validation"},
                      fields={"id": "ind", "context": "ctx_a", "choice_prefix": "ctx_b", "choices": "endings",
                              "label": "label"}, revision="refs/pr/7"),
        train=TrainConfig(epochs=7, lr=1e-5, batch_size=16, max_length=256),
    ),
    TaskSpec(
        name="commonsenseqa", family="multiple_choice", phases=("intermediate",), metric="accuracy",
        description="CommonsenseQA: 5-way questions built on ConceptNet relations",
        num_choices=5,
        files=FileSource(folder="commonsenseqa", reader="csqa_jsonl", splits={
            "train": "train_rand_split.jsonl", "dev": "dev_rand_split.jsonl"},
            hint="download https://s3.amazonaws.com/commensenseqa/train_rand_split.jsonl and "
                 "https://s3.amazonaws.com/commensenseqa/dev_rand_split.jsonl into {dir}"),
        hub=HubSource(path="tau/commonsense_qa", splits={"train": "train", "dev": "validation"},
                      fields={"id": "id", "question": "question", "choices": "choices.text",
                              "choice_keys": "choices.label", "label": "answerKey"}),
        train=TrainConfig(epochs=15, lr=1e-5, batch_size=32, max_length=256),
    ),
    TaskSpec(
        name="cosmosqa", family="multiple_choice", phases=("intermediate",), metric="accuracy",
        description="Cosmos QA: 4-way commonsense reading comprehension on everyday narratives",
        num_choices=4,
        files=FileSource(folder="cosmosqa", reader="cosmosqa_csv", splits={"train": "train.csv", "dev": "valid.csv"},
                         hint="download train.csv and valid.csv from https://github.com/wilburOne/cosmosqa/tree/master/data "
                              "into {dir}"),
        # allenai/cosmos_qa is script-only (datasets >= 4 cannot load it); Samsoup/cosmos_qa is a parquet copy
        # with the same columns and split sizes (25,262 / 2,985 / 6,963).
        hub=HubSource(path="Samsoup/cosmos_qa", splits={"train": "train", "dev": "validation"},
                      fields={"id": "id", "context": "context", "question": "question",
                              "choices": "answer0,answer1,answer2,answer3", "label": "label"}),
        train=TrainConfig(epochs=15, lr=1e-5, batch_size=16, max_length=256),
    ),
    # ------------------------------------------------------------------ XTREME-R's XCOPA recipe
    # scripts/train_xcopa.sh: train on English Social IQa, then on English COPA, then predict XCOPA
    # zero-shot. Here that is `intermediate.tasks: [siqa]` and the target `xcopa` (trained on copa);
    # configs/smoke/xcopa.yaml. One difference: XTREME-R keeps the SIQa-trained scoring head for COPA,
    # while every target here starts from a fresh head (the encoder is what carries over).
    # Hyperparameters for XLM-R Large from that script: lr 3e-5, batch 2 x 16 accumulation, 5 epochs, length 128.
    TaskSpec(
        name="siqa", family="multiple_choice", phases=("intermediate",), metric="accuracy",
        description="Social IQa: 3-way questions about social situations (XTREME-R's first XCOPA stage)",
        num_choices=3,
        # No hub source: the hub copy (allenai/social_i_qa) numbers its answers 1-3 as strings.
        files=FileSource(folder="siqa", reader="siqa_jsonl", splits={
            "train": "socialIQa_v1.4_trn.jsonl", "dev": "socialIQa_v1.4_dev.jsonl"},
            hint="download https://maartensap.github.io/social-iqa/data/socialIQa_v1.4.tgz and untar it into {dir}"),
        train=TrainConfig(epochs=5, lr=3e-5, batch_size=32, max_length=128),
    ),
    TaskSpec(
        name="copa", family="multiple_choice", phases=("intermediate",), metric="accuracy",
        description="COPA (SuperGLUE): pick the more plausible cause or effect of a premise; XCOPA's English data",
        num_choices=2,
        files=FileSource(folder="copa", reader="copa_jsonl", splits={
            "train": "COPA/train.jsonl", "dev": "COPA/val.jsonl", "test": "COPA/test.jsonl"},
            hint="download https://dl.fbaipublicfiles.com/glue/superglue/data/v2/COPA.zip and unzip it into {dir}"),
        hub=HubSource(path="aps/super_glue", name="copa", splits={"train": "train", "dev": "validation"},
                      fields=_COPA_FIELDS),
        train=TrainConfig(epochs=5, lr=3e-5, batch_size=32, max_length=128),
    ),
    TaskSpec(
        name="xcopa", family="multiple_choice", phases=("xtreme",), metric="accuracy", group="classification",
        description="XCOPA (XTREME-R): trained on English COPA, zero-shot causal reasoning in 11 languages",
        num_choices=2, languages=XTREME_R_LANGUAGES["xcopa"], train_task="copa",
        files=FileSource(folder="xcopa", reader="xcopa_jsonl", splits={
            "dev": "data/{lang}/val.{lang}.jsonl", "test": "data/{lang}/test.{lang}.jsonl"},
            hint="git clone https://github.com/cambridgeltl/xcopa {dir} (files data/<lang>/{val,test}.<lang>.jsonl)"),
        hub=HubSource(path="cambridgeltl/xcopa", name="{lang}", splits={"dev": "validation", "test": "test"},
                      fields=_COPA_FIELDS),
        train=TrainConfig(epochs=5, lr=3e-5, batch_size=32, max_length=128),
    ),
]
