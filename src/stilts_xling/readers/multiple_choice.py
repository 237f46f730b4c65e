"""Readers for the multiple-choice formats: HellaSwag (``hellaswag_jsonl``), CommonsenseQA (``csqa_jsonl``),
Cosmos QA (``cosmosqa_csv``, ``cosmosqa_jsonl``), SuperGLUE COPA and XCOPA (``copa_jsonl``, ``xcopa_jsonl``)
and Social IQa (``siqa_jsonl``), all into the multiple_choice schema via ``_mc``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

from .common import _err, _get, _jsonl, _nonempty


# ---------------------------------------------------------------- multiple choice

def _mc(id_: str, context: str, question: str, choices: list[str], label: Any, path: Path, where: Any) -> dict:
    # Cosmos QA csv gives "2", the jsonl files give 2.
    if label is not None and not (str(label).isdigit() and int(label) < len(choices)):
        raise _err(path, where, f"label must be an index 0..{len(choices) - 1}", "fix the label field")
    label = None if label is None else int(label)
    return {"id": id_, "context": context, "question": question, "choices": choices, "label": label}


def read_hellaswag_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    """As jiant's hellaswag.py: prompt = ctx_a, choice i = ctx_b + " " + endings[i] (stripped when ctx_b is "")."""
    out = []
    for n, obj in _jsonl(path):
        ctx_b, endings = _get(obj, "ctx_b", path, n, str), _get(obj, "endings", path, n, list)
        if not endings or not all(isinstance(e, str) for e in endings):
            raise _err(path, n, "'endings' must be a non-empty list of strings", "use the original HellaSwag jsonl")
        out.append(_mc(str(_get(obj, "ind", path, n)), _get(obj, "ctx_a", path, n, str), "",
                       [f"{ctx_b} {e}".strip() for e in endings], obj.get("label"), path, n))
    return _nonempty(out, path)


def read_csqa_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    """CommonsenseQA: question.stem, 5 choices labelled A-E, answerKey -> index (absent in test)."""
    out = []
    for n, obj in _jsonl(path):
        q = _get(obj, "question", path, n, dict)
        choices = _get(q, "choices", path, n, list)
        keys = [_get(c, "label", path, n) for c in choices]
        key = obj.get("answerKey") or None
        if key is not None and key not in keys:
            raise _err(path, n, f"answerKey {key!r} is not one of the choice labels {keys}", "fix answerKey")
        out.append(_mc(str(_get(obj, "id", path, n)), "", _get(q, "stem", path, n, str),
                       [_get(c, "text", path, n, str) for c in choices], None if key is None else keys.index(key),
                       path, n))
    return _nonempty(out, path)


_COSMOS_FIELDS = ("id", "context", "question", "answer0", "answer1", "answer2", "answer3")


def _cosmos(row: dict, path: Path, where: Any) -> dict:
    id_ = str(_get(row, "id", path, where))
    context, question, *choices = (_get(row, k, path, where, str) for k in _COSMOS_FIELDS[1:])
    label = row.get("label")
    return _mc(id_, context, question, choices, None if label in (None, "") else label, path, where)


def read_cosmosqa_csv(path: Path, lang: str | None = None) -> list[dict]:
    """Cosmos QA csv: RFC-4180 quoting with multi-line fields and CRLF endings, so the csv module."""
    out, header, start = [], None, 1
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            for fields in reader:
                if header is None:
                    header = fields  # a wrong header surfaces as "missing field" on the first record
                elif fields and len(fields) != len(header):
                    raise _err(path, start, f"expected {len(header)} columns, found {len(fields)}",
                               "quote fields that contain commas or line breaks")
                elif fields:
                    out.append(_cosmos(dict(zip(header, fields)), path, start))
                start = reader.line_num + 1  # a record may span several physical lines
        except csv.Error as e:
            raise _err(path, reader.line_num, f"csv syntax error ({e})", "check the quoting") from None
        except UnicodeDecodeError:
            raise _err(path, reader.line_num + 1, "not UTF-8 text", "convert the file to UTF-8 or re-download it") \
                from None
    return _nonempty(out, path)


def read_cosmosqa_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    return _nonempty([_cosmos(obj, path, n) for n, obj in _jsonl(path)], path)


# ---------------------------------------------------------------- COPA / XCOPA / Social IQa

_COPA_QUESTIONS = ("cause", "effect")


def read_copa_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    """SuperGLUE COPA and XCOPA (same fields): premise, choice1, choice2, question (cause|effect), label,
    idx. ``question`` stays the bare word; the multiple-choice family turns it into a question."""
    out = []
    for n, obj in _jsonl(path):
        question = _get(obj, "question", path, n, str)
        if question not in _COPA_QUESTIONS:
            raise _err(path, n, f"question {question!r} is not 'cause' or 'effect'", "fix the record")
        out.append(_mc(str(_get(obj, "idx", path, n)), _get(obj, "premise", path, n, str), question,
                       [_get(obj, "choice1", path, n, str), _get(obj, "choice2", path, n, str)], obj.get("label"),
                       path, n))
    return _nonempty(out, path)


def read_siqa_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    """Social IQa v1.4 ``socialIQa_v1.4_{trn,dev,tst}.jsonl``: context, question, answerA-C, correct A|B|C.

    The files carry no ids, so the record index is the id."""
    out = []
    for n, obj in _jsonl(path):
        correct = obj.get("correct") or None
        if correct is not None and correct not in "ABC":
            raise _err(path, n, f"'correct' is {correct!r}, not A, B or C", "fix the record")
        out.append(_mc(str(len(out)), _get(obj, "context", path, n, str), _get(obj, "question", path, n, str),
                       [_get(obj, f"answer{k}", path, n, str) for k in "ABC"],
                       None if correct is None else "ABC".index(correct), path, n))
    return _nonempty(out, path)


READERS: dict[str, Callable[..., list[dict]]] = {
    "hellaswag_jsonl": read_hellaswag_jsonl, "csqa_jsonl": read_csqa_jsonl,
    "cosmosqa_csv": read_cosmosqa_csv, "cosmosqa_jsonl": read_cosmosqa_jsonl,
    "copa_jsonl": read_copa_jsonl, "xcopa_jsonl": read_copa_jsonl, "siqa_jsonl": read_siqa_jsonl,
}
FAMILY = "multiple_choice"
