"""Readers for the sentence(-pair) classification formats: MNLI/SNLI (``mnli_jsonl``, ``mnli_txt``,
``snli_txt``), XNLI (``xnli_tsv``), XNLI-MT (``xnli_mt_tsv``), ANLI (``anli_jsonl``), QQP (``glue_qqp_tsv``),
PAWS-X (``pawsx_tsv``) and the GLUE train/dev files (``glue_cola_tsv``, ``glue_sst2_tsv``, ``glue_mrpc_tsv``,
``glue_qnli_tsv``, ``glue_rte_tsv``, ``glue_wnli_tsv``, and ``glue_stsb_tsv``, which serves the regression
family: the classification schema with a float label).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .common import _err, _get, _jsonl, _label, _nonempty, _pair, _tab_fields, _tsv


NLI_LABELS = ("entailment", "neutral", "contradiction")
BINARY_LABELS = ("0", "1")
# XNLI-MT train files write the contradiction class as "contradictory" (xtreme utils_preprocess maps it).
_NLI_ALIASES = {"contradictory": "contradiction"}
_ANLI_LABELS = {"e": "entailment", "n": "neutral", "c": "contradiction"}


# ---------------------------------------------------------------- classification

def read_mnli_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    out = []
    for n, obj in _jsonl(path):
        gold = obj.get("gold_label") or None  # unlabeled test files
        if gold == "-":
            continue  # no annotator majority: MNLI/SNLI leave these out of training and scoring
        label = None if gold is None else _label(gold, NLI_LABELS, path, n)
        out.append(_pair(str(_get(obj, "pairID", path, n)), _get(obj, "sentence1", path, n, str),
                         _get(obj, "sentence2", path, n, str), label))
    return _nonempty(out, path)


def read_nli_txt(path: Path, lang: str | None = None) -> list[dict]:
    """SNLI 1.0 / MultiNLI 1.0 ``*.txt``: tab-separated with header, gold_label "-" skipped."""
    out = []
    for n, row in _tsv(path, ("gold_label", "sentence1", "sentence2", "pairID"), ragged=True):
        if row["gold_label"] == "-":
            continue
        out.append(_pair(row["pairID"], row["sentence1"], row["sentence2"],
                         _label(row["gold_label"], NLI_LABELS, path, n)))
    return _nonempty(out, path)


def read_xnli_tsv(path: Path, lang: str | None = None) -> list[dict]:
    """XNLI-1.0 ``xnli.{dev,test}.tsv``: all 15 languages in one file; keeps rows with language == lang."""
    out = []
    for n, row in _tsv(path, ("language", "gold_label", "sentence1", "sentence2", "pairID")):
        if lang is None or row["language"] == lang:
            # pairID repeats across languages, so the language makes the id unique.
            out.append(_pair(f"{row['language']}-{row['pairID']}", row["sentence1"], row["sentence2"],
                             _label(row["gold_label"], NLI_LABELS, path, n, _NLI_ALIASES)))
    return _nonempty(out, path, lang)


def read_xnli_mt_tsv(path: Path, lang: str | None = None) -> list[dict]:
    """XNLI-MT-1.0 ``multinli.train.<lang>.tsv``: premise, hypo, label; no ids, so the row index."""
    out = [_pair(str(i), row["premise"], row["hypo"], _label(row["label"], NLI_LABELS, path, n, _NLI_ALIASES))
           for i, (n, row) in enumerate(_tsv(path, ("premise", "hypo", "label")))]
    return _nonempty(out, path)


def read_anli_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    out = []
    for n, obj in _jsonl(path):
        label = _ANLI_LABELS.get(_get(obj, "label", path, n))
        if label is None:
            raise _err(path, n, f"label {obj['label']!r} is not one of ['c', 'e', 'n']", "fix or drop the record")
        out.append(_pair(str(_get(obj, "uid", path, n)), _get(obj, "context", path, n, str),
                         _get(obj, "hypothesis", path, n, str), label))
    return _nonempty(out, path)


def read_qqp_tsv(path: Path, lang: str | None = None) -> list[dict]:
    """GLUE QQP: train/dev ``id qid1 qid2 question1 question2 is_duplicate``; test has no label column.

    A record broken over two lines by a quoted question with a line break (old GLUE release) is
    re-joined; any other column-count problem is an error, never a silent skip.
    """
    out = []
    for n, row in _tsv(path, ("id", "question1", "question2"), join_broken=True):
        label = row.get("is_duplicate")
        out.append(_pair(row["id"], row["question1"], row["question2"],
                         None if label is None else _label(label, BINARY_LABELS, path, n)))
    return _nonempty(out, path)


def read_pawsx_tsv(path: Path, lang: str | None = None) -> list[dict]:
    """PAWS-X x-final ``id sentence1 sentence2 label``: every row after the header is data (xtreme 712450f)."""
    out = [_pair(row["id"], row["sentence1"], row["sentence2"], _label(row["label"], BINARY_LABELS, path, n))
           for n, row in _tsv(path, ("id", "sentence1", "sentence2", "label"))]
    return _nonempty(out, path)


# ---------------------------------------------------------------- GLUE (download_glue_data.py layout)
# Train/dev files only: GLUE's test.tsv files have no labels and a different column layout.

def read_glue_cola_tsv(path: Path, lang: str | None = None) -> list[dict]:
    """CoLA train/dev: no header; ``source<TAB>label<TAB>original label<TAB>sentence`` (label 0/1)."""
    out = []
    for n, fields in _tab_fields(path, 4, "4 tab-separated columns (source, label, original label, sentence)",
                                 "use CoLA's train.tsv/dev.tsv (test.tsv has no labels)"):
        # Sources ("gj04") repeat, so the running index is the id.
        out.append(_pair(str(len(out)), fields[3], None, _label(fields[1], BINARY_LABELS, path, n)))
    return _nonempty(out, path)


def read_glue_sst2_tsv(path: Path, lang: str | None = None) -> list[dict]:
    """SST-2 train/dev: header ``sentence<TAB>label`` (label 0/1)."""
    out = [_pair(str(i), row["sentence"], None, _label(row["label"], BINARY_LABELS, path, n))
           for i, (n, row) in enumerate(_tsv(path, ("sentence", "label")))]
    return _nonempty(out, path)


def read_glue_mrpc_tsv(path: Path, lang: str | None = None) -> list[dict]:
    """MRPC train/dev (msr_paraphrase layout): ``Quality #1 ID #2 ID #1 String #2 String``, Quality 0/1."""
    out = [_pair(str(i), row["#1 String"], row["#2 String"], _label(row["Quality"], BINARY_LABELS, path, n))
           for i, (n, row) in enumerate(_tsv(path, ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")))]
    return _nonempty(out, path)


ENTAILMENT_LABELS = ("entailment", "not_entailment")


def _glue_pair_reader(first: str, second: str, labels: tuple[str, ...]) -> Callable[..., list[dict]]:
    """QNLI (index question sentence label), RTE and WNLI (index sentence1 sentence2 label)."""
    def read(path: Path, lang: str | None = None) -> list[dict]:
        out = [_pair(row["index"], row[first], row[second], _label(row["label"], labels, path, n))
               for n, row in _tsv(path, ("index", first, second, "label"))]
        return _nonempty(out, path)
    return read


read_glue_qnli_tsv = _glue_pair_reader("question", "sentence", ENTAILMENT_LABELS)
read_glue_rte_tsv = _glue_pair_reader("sentence1", "sentence2", ENTAILMENT_LABELS)
read_glue_wnli_tsv = _glue_pair_reader("sentence1", "sentence2", BINARY_LABELS)


def read_glue_stsb_tsv(path: Path, lang: str | None = None) -> list[dict]:
    """STS-B train/dev: ten columns, read by name: sentence1, sentence2, score (a float in [0, 5])."""
    out = []
    for n, row in _tsv(path, ("index", "sentence1", "sentence2", "score")):
        try:
            score = float(row["score"])
        except ValueError:
            raise _err(path, n, f"score {row['score']!r} is not a number", "fix or drop the record") from None
        out.append(_pair(row["index"], row["sentence1"], row["sentence2"], score))
    return _nonempty(out, path)


READERS: dict[str, Callable[..., list[dict]]] = {
    "mnli_jsonl": read_mnli_jsonl, "mnli_txt": read_nli_txt, "snli_txt": read_nli_txt,
    "xnli_tsv": read_xnli_tsv, "xnli_mt_tsv": read_xnli_mt_tsv, "anli_jsonl": read_anli_jsonl,
    "glue_qqp_tsv": read_qqp_tsv, "pawsx_tsv": read_pawsx_tsv,
    "glue_cola_tsv": read_glue_cola_tsv, "glue_sst2_tsv": read_glue_sst2_tsv, "glue_mrpc_tsv": read_glue_mrpc_tsv,
    "glue_qnli_tsv": read_glue_qnli_tsv, "glue_rte_tsv": read_glue_rte_tsv, "glue_wnli_tsv": read_glue_wnli_tsv,
    "glue_stsb_tsv": read_glue_stsb_tsv,
}
FAMILY: dict[str, str] = {
    **dict.fromkeys(READERS, "classification"),
    "glue_stsb_tsv": "regression",  # the classification schema with a float label
}
