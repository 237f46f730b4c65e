"""Sentence(-pair) classification: NLI, paraphrase. A head on the pooled first token, cross-entropy."""
from __future__ import annotations

from typing import Any

import torch

from .. import metrics
from ..config import TrainConfig
from ..languages import XTREME_LANGUAGES
from .base import FileSource, HubSource, TaskSpec, cross_entropy, pooled_head

NLI_LABELS = ("entailment", "neutral", "contradiction")
_SCORERS = {
    "accuracy": lambda preds, golds: metrics.accuracy(preds, golds),
    "accuracy_f1": lambda preds, golds: metrics.accuracy_f1(preds, golds, positive="1"),
    "mcc": lambda preds, golds: {**metrics.accuracy(preds, golds), **metrics.matthews_corr(preds, golds)},
}


class ClassificationFamily:
    name = "classification"

    def featurize(self, spec: TaskSpec, examples: list[dict], tokenizer: Any, max_length: int) -> list[dict]:
        label_ids = {label: i for i, label in enumerate(spec.labels)}
        firsts = [ex["text_a"] for ex in examples]
        # Single-sentence tasks have text_b None everywhere (and hub rows of CoLA/SST-2 have no such
        # column at all); the tokenizer wants all-or-nothing.
        seconds = [ex.get("text_b") for ex in examples]
        pair = seconds if any(s is not None for s in seconds) else None
        encoded = tokenizer(firsts, pair, truncation=True, max_length=max_length)["input_ids"]
        return [{"input_ids": ids, "labels": label_ids[ex["label"]] if ex["label"] is not None else -100,
                 "example_index": i} for i, (ids, ex) in enumerate(zip(encoded, examples))]

    def make_head(self, spec: TaskSpec, hidden_size: int) -> torch.nn.Module:
        return pooled_head(hidden_size, len(spec.labels))

    def forward(self, head, hidden, pooled, batch):
        logits = head(pooled)
        labels = batch.get("labels")
        if labels is None:  # prediction
            return None, logits
        return cross_entropy(logits, labels), logits

    def predict(self, spec, examples, features, logits):
        return {examples[f["example_index"]]["id"]: spec.labels[int(torch.as_tensor(row).argmax())]
                for f, row in zip(features, logits)}

    def score(self, spec, predictions, examples, lang):
        gold = [ex for ex in examples if ex["label"] is not None]
        return _SCORERS[spec.scorer]([predictions[ex["id"]] for ex in gold], [ex["label"] for ex in gold])


FAMILY = ClassificationFamily()

_MNLI_HINT = "download https://cims.nyu.edu/~sbowman/multinli/multinli_1.0.zip and unzip it into {dir}"
_XNLI_HINT = "download https://dl.fbaipublicfiles.com/XNLI/XNLI-1.0.zip and unzip it into {dir}"
_ANLI_HINT = "download https://dl.fbaipublicfiles.com/anli/anli_v1.0.zip and unzip it into {dir}"
_NLI_FIELDS = {"text_a": "premise", "text_b": "hypothesis", "label": "label"}
_XNLI_MT_HINT = "download https://dl.fbaipublicfiles.com/XNLI/XNLI-MT-1.0.zip and unzip it into {dir}"
ENTAILMENT_LABELS = ("entailment", "not_entailment")
_GLUE_SPLITS = {"train": "train", "dev": "validation"}
_GLUE_SMALL = TrainConfig(epochs=10, lr=1e-5, batch_size=16, max_length=128)
_GLUE_LARGE = TrainConfig(epochs=3, lr=1e-5, batch_size=32, max_length=128)


def _glue_hint(task: str) -> str:
    return f"download https://dl.fbaipublicfiles.com/glue/data/{task}.zip and unzip it into {{dir}}"


TASKS = [
    TaskSpec(
        name="mnli", family="classification", phases=("intermediate",), metric="accuracy",
        description="MultiNLI 3-way entailment (also XNLI's English training data)",
        labels=NLI_LABELS,
        files=FileSource(folder="mnli", reader="mnli_jsonl", hint=_MNLI_HINT, splits={
            "train": "multinli_1.0/multinli_1.0_train.jsonl",
            "dev": "multinli_1.0/multinli_1.0_dev_matched.jsonl",
            "dev_mismatched": "multinli_1.0/multinli_1.0_dev_mismatched.jsonl"}),
        hub=HubSource(path="nyu-mll/multi_nli", fields=_NLI_FIELDS, splits={
            "train": "train", "dev": "validation_matched", "dev_mismatched": "validation_mismatched"}),
        train=TrainConfig(epochs=2, lr=1e-5, batch_size=32, max_length=256),
    ),
    TaskSpec(
        name="xnli", family="classification", phases=("xtreme",), metric="accuracy", group="classification",
        description="XNLI: trained on English MNLI, evaluated zero-shot in 15 languages",
        labels=NLI_LABELS, languages=XTREME_LANGUAGES["xnli"], train_task="mnli",
        files=FileSource(folder="xnli", reader="xnli_tsv", hint=_XNLI_HINT, splits={
            "dev": "XNLI-1.0/xnli.dev.tsv", "test": "XNLI-1.0/xnli.test.tsv"}),
        hub=HubSource(path="facebook/xnli", name="{lang}", fields=_NLI_FIELDS,
                      splits={"dev": "validation", "test": "test"}),
        train=TrainConfig(epochs=2, lr=1e-5, batch_size=32, max_length=256),
    ),
    TaskSpec(
        name="snli", family="classification", phases=("intermediate",), metric="accuracy",
        description="SNLI 3-way entailment (part of ANLI+ training data)", labels=NLI_LABELS,
        files=FileSource(folder="snli", reader="snli_txt", splits={
            "train": "snli_1.0/snli_1.0_train.txt", "dev": "snli_1.0/snli_1.0_dev.txt"},
            hint="download https://nlp.stanford.edu/projects/snli/snli_1.0.zip and unzip it into {dir}"),
        hub=HubSource(path="stanfordnlp/snli", fields=_NLI_FIELDS, splits={"train": "train", "dev": "validation"}),
        train=TrainConfig(epochs=2, lr=1e-5, batch_size=32, max_length=256),
    ),
    TaskSpec(
        name="anli", family="classification", phases=("intermediate",), metric="accuracy",
        description="Adversarial NLI, rounds R1-R3 concatenated", labels=NLI_LABELS,
        files=FileSource(folder="anli", reader="anli_jsonl", hint=_ANLI_HINT, splits={
            "train": tuple(f"anli_v1.0/R{r}/train.jsonl" for r in (1, 2, 3)),
            "dev": tuple(f"anli_v1.0/R{r}/dev.jsonl" for r in (1, 2, 3)),
            "test": tuple(f"anli_v1.0/R{r}/test.jsonl" for r in (1, 2, 3))}),
        hub=HubSource(path="facebook/anli", fields=_NLI_FIELDS, splits={
            "train": "train_r1+train_r2+train_r3", "dev": "dev_r1+dev_r2+dev_r3", "test": "test_r1+test_r2+test_r3"}),
        # No published intermediate setting for ANLI: 2 epochs, lr 1e-5, batch 32 as for MNLI (facts.md 5).
        train=TrainConfig(epochs=2, lr=1e-5, batch_size=32, max_length=256),
    ),
    TaskSpec(
        name="anli_plus", family="classification", phases=("intermediate",), metric="accuracy",
        description="ANLI+: ANLI R1-R3 training data plus MNLI and SNLI; selected on ANLI dev",
        labels=NLI_LABELS, extra_train=("mnli", "snli"),
        files=FileSource(folder="anli", reader="anli_jsonl", hint=_ANLI_HINT, splits={
            "train": tuple(f"anli_v1.0/R{r}/train.jsonl" for r in (1, 2, 3)),
            "dev": tuple(f"anli_v1.0/R{r}/dev.jsonl" for r in (1, 2, 3))}),
        hub=HubSource(path="facebook/anli", fields=_NLI_FIELDS, splits={
            "train": "train_r1+train_r2+train_r3", "dev": "dev_r1+dev_r2+dev_r3"}),
        train=TrainConfig(epochs=2, lr=1e-5, batch_size=32, max_length=256),
    ),
    TaskSpec(
        name="qqp", family="classification", phases=("intermediate", "xtreme"), metric="acc_and_f1",
        scorer="accuracy_f1", group="glue",
        description="Quora Question Pairs (GLUE): duplicate or not; jiant selects on (acc+F1)/2",
        labels=("0", "1"),
        files=FileSource(folder="qqp", reader="glue_qqp_tsv", splits={"train": "QQP/train.tsv", "dev": "QQP/dev.tsv"},
                         hint="download https://dl.fbaipublicfiles.com/glue/data/QQP-clean.zip and unzip it into {dir}"),
        hub=HubSource(path="nyu-mll/glue", name="qqp", label_names=("0", "1"), splits={"train": "train", "dev": "validation"},
                      fields={"text_a": "question1", "text_b": "question2", "label": "label"}),
        train=TrainConfig(epochs=5, lr=1e-5, batch_size=32, max_length=256),
    ),
    TaskSpec(
        name="pawsx", family="classification", phases=("xtreme",), metric="accuracy", group="classification",
        description="PAWS-X paraphrase identification: English train, zero-shot in 7 languages",
        labels=("0", "1"), languages=XTREME_LANGUAGES["pawsx"],
        files=FileSource(folder="pawsx", reader="pawsx_tsv", splits={
            "train": "x-final/en/train.tsv", "dev": "x-final/{lang}/dev_2k.tsv", "test": "x-final/{lang}/test_2k.tsv"},
            hint="download https://storage.googleapis.com/paws/pawsx/x-final.tar.gz and untar it into {dir}"),
        hub=HubSource(path="google-research-datasets/paws-x", name="{lang}", label_names=("0", "1"),
                      fields={"text_a": "sentence1", "text_b": "sentence2", "label": "label"},
                      splits={"train": "train", "dev": "validation", "test": "test"}),
        train=TrainConfig(epochs=5, lr=1e-5, batch_size=32, max_length=256),
    ),
    # ------------------------------------------------------------------ GLUE targets (English only)
    # Fine-tuned on the task's train set and scored on its dev set, like the XTREME targets, so that an
    # intermediate-trained encoder can be put through GLUE (`stilts eval-xtreme configs/glue.yaml`).
    # GLUE's test sets have no labels, so only train/dev are listed. Hyperparameters: RoBERTa's GLUE
    # recipe (Liu et al. 2019, appendix: lr 1e-5..3e-5, batch 16/32, 10 epochs), 3 epochs for the large sets.
    TaskSpec(
        name="cola", family="classification", phases=("xtreme",), metric="mcc", scorer="mcc", group="glue",
        description="GLUE CoLA: grammatical acceptability (single sentence); Matthews correlation",
        labels=("0", "1"),
        files=FileSource(folder="glue", reader="glue_cola_tsv", hint=_glue_hint("CoLA"),
                         splits={"train": "CoLA/train.tsv", "dev": "CoLA/dev.tsv"}),
        hub=HubSource(path="nyu-mll/glue", name="cola", label_names=("0", "1"), splits=_GLUE_SPLITS,
                      fields={"text_a": "sentence", "label": "label"}),
        train=_GLUE_SMALL,
    ),
    TaskSpec(
        name="sst2", family="classification", phases=("xtreme",), metric="accuracy", group="glue",
        description="GLUE SST-2: binary sentiment of movie-review sentences; accuracy",
        labels=("0", "1"),
        files=FileSource(folder="glue", reader="glue_sst2_tsv", hint=_glue_hint("SST-2"),
                         splits={"train": "SST-2/train.tsv", "dev": "SST-2/dev.tsv"}),
        hub=HubSource(path="nyu-mll/glue", name="sst2", label_names=("0", "1"), splits=_GLUE_SPLITS,
                      fields={"text_a": "sentence", "label": "label"}),
        train=_GLUE_LARGE,
    ),
    TaskSpec(
        name="mrpc", family="classification", phases=("xtreme",), metric="acc_and_f1", scorer="accuracy_f1",
        group="glue", description="GLUE MRPC: paraphrase or not (news sentence pairs); F1 and accuracy",
        labels=("0", "1"),
        files=FileSource(folder="glue", reader="glue_mrpc_tsv", splits={"train": "MRPC/train.tsv", "dev": "MRPC/dev.tsv"},
                         hint="run GLUE's download_glue_data.py --tasks MRPC (it builds MRPC/train.tsv and dev.tsv "
                              "from msr_paraphrase_train.txt) with --data_dir {dir}"),
        hub=HubSource(path="nyu-mll/glue", name="mrpc", label_names=("0", "1"), splits=_GLUE_SPLITS,
                      fields={"text_a": "sentence1", "text_b": "sentence2", "label": "label"}),
        train=_GLUE_SMALL,
    ),
    TaskSpec(
        name="qnli", family="classification", phases=("xtreme",), metric="accuracy", group="glue",
        description="GLUE QNLI: does the sentence answer the question (from SQuAD); accuracy",
        labels=ENTAILMENT_LABELS,
        files=FileSource(folder="glue", reader="glue_qnli_tsv", splits={"train": "QNLI/train.tsv", "dev": "QNLI/dev.tsv"},
                         hint="download https://dl.fbaipublicfiles.com/glue/data/QNLIv2.zip and unzip it into {dir}"),
        hub=HubSource(path="nyu-mll/glue", name="qnli", label_names=ENTAILMENT_LABELS, splits=_GLUE_SPLITS,
                      fields={"text_a": "question", "text_b": "sentence", "label": "label"}),
        train=_GLUE_LARGE,
    ),
    TaskSpec(
        name="rte", family="classification", phases=("xtreme",), metric="accuracy", group="glue",
        description="GLUE RTE: textual entailment (RTE1-3, 5), two-way; accuracy",
        labels=ENTAILMENT_LABELS,
        files=FileSource(folder="glue", reader="glue_rte_tsv", hint=_glue_hint("RTE"),
                         splits={"train": "RTE/train.tsv", "dev": "RTE/dev.tsv"}),
        hub=HubSource(path="nyu-mll/glue", name="rte", label_names=ENTAILMENT_LABELS, splits=_GLUE_SPLITS,
                      fields={"text_a": "sentence1", "text_b": "sentence2", "label": "label"}),
        train=_GLUE_SMALL,
    ),
    TaskSpec(
        name="wnli", family="classification", phases=("xtreme",), metric="accuracy", group="glue",
        description="GLUE WNLI: Winograd schemas as sentence pairs (label 1 = entailed); accuracy",
        labels=("0", "1"),
        files=FileSource(folder="glue", reader="glue_wnli_tsv", hint=_glue_hint("WNLI"),
                         splits={"train": "WNLI/train.tsv", "dev": "WNLI/dev.tsv"}),
        hub=HubSource(path="nyu-mll/glue", name="wnli", label_names=("0", "1"), splits=_GLUE_SPLITS,
                      fields={"text_a": "sentence1", "text_b": "sentence2", "label": "label"}),
        train=_GLUE_SMALL,
    ),
    # GLUE MNLI: a target is scored on the configured splits (dev/test) only, so the matched and mismatched
    # dev sets are two targets. Both train on MNLI and select on matched dev (train_task) with the same seed:
    # the same fine-tuning run twice (up to GPU nondeterminism), scored on different dev sets.
    TaskSpec(
        name="mnli_matched", family="classification", phases=("xtreme",), metric="accuracy", group="glue",
        description="GLUE MNLI-m: trained on MNLI, accuracy on the matched dev set (same genres as train)",
        labels=NLI_LABELS, train_task="mnli",
        files=FileSource(folder="mnli", reader="mnli_jsonl", hint=_MNLI_HINT,
                         splits={"dev": "multinli_1.0/multinli_1.0_dev_matched.jsonl"}),
        hub=HubSource(path="nyu-mll/multi_nli", fields=_NLI_FIELDS, splits={"dev": "validation_matched"}),
        train=TrainConfig(epochs=2, lr=1e-5, batch_size=32, max_length=128),
    ),
    TaskSpec(
        name="mnli_mismatched", family="classification", phases=("xtreme",), metric="accuracy", group="glue",
        description="GLUE MNLI-mm: trained on MNLI, accuracy on the mismatched dev set (unseen genres)",
        labels=NLI_LABELS, train_task="mnli",
        files=FileSource(folder="mnli", reader="mnli_jsonl", hint=_MNLI_HINT,
                         splits={"dev": "multinli_1.0/multinli_1.0_dev_mismatched.jsonl"}),
        hub=HubSource(path="nyu-mll/multi_nli", fields=_NLI_FIELDS, splits={"dev": "validation_mismatched"}),
        train=TrainConfig(epochs=2, lr=1e-5, batch_size=32, max_length=128),
    ),
    # ------------------------------------------------------------------ machine-translated intermediate data
    # The paper's alternative (b) (facts.md 1.5): MNLI train as machine-translated by XNLI-MT 1.0 (14
    # languages). The languages trained on come from `intermediate.task_options.mnli_mt.languages`
    # (translated.py); "en" there means MNLI's own English train. No translated dev set exists, so model
    # selection uses English MNLI dev: train_task names that English source.
    TaskSpec(
        name="mnli_mt", family="classification", phases=("intermediate",), metric="accuracy",
        description="MNLI train machine-translated (XNLI-MT 1.0); languages from task_options; MNLI dev",
        labels=NLI_LABELS, languages=XTREME_LANGUAGES["xnli"], train_task="mnli",
        files=FileSource(folder="xnli", reader="xnli_mt_tsv", hint=_XNLI_MT_HINT,
                         splits={"train": "XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv"}),
        hub=HubSource(path="facebook/xnli", name="{lang}", fields=_NLI_FIELDS, splits={"train": "train"}),
        train=TrainConfig(epochs=2, lr=1e-5, batch_size=32, max_length=256),
    ),
]
