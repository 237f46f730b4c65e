"""Prediction files in XTREME's submission formats: writing ours, scoring anyone's (`stilts score`).

Formats, by family (xtreme's evaluate.py reads the same):
  classification  one label per line                           (xnli, pawsx)        .tsv
  tagging         one tag per line, blank line between sentences (udpos, panx)      .tsv
  span_qa         JSON {question id: answer text}              (xquad, mlqa, tydiqa) .json
  bucc2018        "src_id<TAB>trg_id" per mined pair                                .tsv
  tatoeba         one predicted target line index per line                          .tsv
                  lines in xtreme's order: its English file sorted by text (tatoeba_preprocess)
  dual_encoder    JSON {question id: [top-20 candidate ids]}   (mewslix, lareqa)     .json
                  Mewsli-X's labels use the same layout, {example id: [gold entity id]} (xtreme
                  mock_test_data/labels/mewslix/test-<lang>.json); scored as mAP@20.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from . import metrics
from .files import write_atomic
from .readers import READERS, DataError
from .retrieval import mean_average_precision
from .tasks.registry import get_task

EXTENSION = {"classification": "tsv", "tagging": "tsv", "span_qa": "json", "retrieval": "tsv", "dual_encoder": "json"}


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    return path.read_text(encoding="utf-8").splitlines()


def _sentences(path: Path, column: int) -> list[list[str]]:
    """Blank-line separated blocks; each line's `column`-th TAB field (negative counts from the end)."""
    out, block = [], []
    for line in _lines(path) + [""]:
        if line.strip():
            block.append(line.split("\t")[column].strip())
        elif block:
            out.append(block)
            block = []
    return out


# ---------------------------------------------------------------------------------------------------
# Writing our predictions (example order = the gold file's order).


def _write_classification(predictions: dict, examples: list[dict]) -> str:
    return "".join(f"{predictions[ex['id']]}\n" for ex in examples)


def _write_tagging(predictions: dict, examples: list[dict]) -> str:
    return "".join("".join(f"{tag}\n" for tag in predictions[ex["id"]]) + "\n" for ex in examples)


def _write_span_qa(predictions: dict, examples: list[dict]) -> str:
    answers = {ex["id"]: _answer_text(predictions[ex["id"]]) for ex in examples}
    return json.dumps(answers, ensure_ascii=False, indent=1) + "\n"


def _write_ranked(predictions: dict, examples: list[dict]) -> str:
    ranked = {ex["id"]: predictions[ex["id"]] for ex in examples if ex["id"] in predictions}
    return json.dumps(ranked, ensure_ascii=False) + "\n"


def _answer_text(prediction: Any) -> str:
    # Span-QA families may carry extra fields (e.g. a no-answer score); the file holds the text only.
    return prediction["text"] if isinstance(prediction, dict) else str(prediction)


_WRITERS: dict[str, Callable[[dict, list[dict]], str]] = {
    "classification": _write_classification, "multiple_choice": _write_classification,
    "regression": _write_classification,  # one score per line (STS-B)
    "tagging": _write_tagging, "span_qa": _write_span_qa, "dual_encoder": _write_ranked,
}


def write_predictions(run_dir: Path, task: str, split: str, lang: str, predictions: dict,
                      examples: list[dict]) -> Path:
    """`<run_dir>/predictions/<task>/<split>-<lang>.<ext>`; the test files form XTREME's submission layout."""
    family = get_task(task).family
    path = Path(run_dir) / "predictions" / task / f"{split}-{lang}.{EXTENSION.get(family, 'tsv')}"
    return write_atomic(path, _WRITERS[family](predictions, examples))


# ---------------------------------------------------------------------------------------------------
# Scoring files.


def _score_classification(task: str, lang: str, pred: Path, gold: Path) -> dict:
    preds = [line.strip() for line in _lines(pred) if line.strip()]
    first = next((line for line in _lines(gold) if line.strip()), "")
    if "\t" in first:  # the task's original file (e.g. xnli.test.tsv), filtered to `lang`
        spec = get_task(task)
        golds = [ex["label"] for ex in READERS[spec.files.reader](gold, lang)]
    else:
        golds = [line.strip() for line in _lines(gold) if line.strip()]
    _same_count(preds, golds, pred, gold, "labels")
    return metrics.accuracy(preds, golds)


def _score_tagging(task: str, lang: str, pred: Path, gold: Path) -> dict:
    preds, golds = _sentences(pred, 0), _sentences(gold, -1)
    _same_count(preds, golds, pred, gold, "sentences")
    return metrics.tagging_scores(preds, golds)


def _score_span_qa(task: str, lang: str, pred: Path, gold: Path) -> dict:
    try:
        predictions = json.loads(pred.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{pred}: expected a JSON object {{question id: answer}} ({err})") from None
    if not isinstance(predictions, dict):
        raise DataError(f"{pred}: expected a JSON object {{question id: answer}}")
    examples = READERS["squad_json"](gold, lang if task == "tydiqa" else None, check_offsets=False)
    golds = {ex["id"]: [a["text"] for a in ex["answers"]] for ex in examples}
    # MLQA has its own language-aware normalisation; XQuAD/TyDiQA/SQuAD use SQuAD v1.1's for every language.
    return metrics.squad_scores(predictions, golds, lang=lang if task == "mlqa" else None)


def _pairs(path: Path) -> set[tuple[str, str]]:
    out = set()
    for n, line in enumerate(_lines(path), 1):
        if line.strip():
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise DataError(f"{path}:{n}: expected 'src_id<TAB>trg_id'")
            out.add((parts[0].strip(), parts[1].strip()))
    return out


def _json_lists(path: Path, what: str) -> dict[str, list]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: expected a JSON object {{{what}}} ({err})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, list) for v in obj.values()):
        raise DataError(f"{path}: expected a JSON object {{{what}}}")
    return obj


def _score_ranked(task: str, lang: str, pred: Path, gold: Path) -> dict:
    """mAP@20 over the gold ids (a gold id without a prediction scores 0), as xtreme utils_mewslix.evaluate;
    with one gold id per question this is Mewsli-X's MRR@20."""
    predictions = _json_lists(pred, "question id: [ranked candidate ids]")
    golds = _json_lists(gold, "question id: [relevant candidate ids]")
    return {metrics.MAP_METRIC: mean_average_precision(
        ((predictions.get(q, []), relevant) for q, relevant in golds.items()), metrics.MAP_K)}


def _score_bucc(task: str, lang: str, pred: Path, gold: Path) -> dict:
    return metrics.bucc_scores(_pairs(pred), _pairs(gold))


def _score_tatoeba(task: str, lang: str, pred: Path, gold: Path) -> dict:
    preds = [line.strip() for line in _lines(pred) if line.strip()]
    golds = [line.strip() for line in _lines(gold) if line.strip()]
    _same_count(preds, golds, pred, gold, "indices")
    return metrics.accuracy(preds, golds)


def _same_count(preds: list, golds: list, pred: Path, gold: Path, what: str) -> None:
    if len(preds) != len(golds):
        raise DataError(f"{pred} has {len(preds)} {what} but {gold} has {len(golds)}; they must align one to one")


_SCORERS: dict[str, Callable[[str, str, Path, Path], dict]] = {
    "classification": _score_classification, "tagging": _score_tagging, "span_qa": _score_span_qa,
    "dual_encoder": _score_ranked,
}
_TASK_SCORERS = {"bucc2018": _score_bucc, "tatoeba": _score_tatoeba}


def score_files(task: str, lang: str, predictions: Path, gold: Path) -> dict[str, float]:
    try:
        spec = get_task(task)
    except KeyError as err:
        raise DataError(err.args[0]) from None
    scorer = _TASK_SCORERS.get(task) or _SCORERS.get(spec.family)
    if scorer is None:
        raise DataError(f"`stilts score` has no file format for task {task!r} (family {spec.family})")
    return scorer(task, lang, Path(predictions), Path(gold))
