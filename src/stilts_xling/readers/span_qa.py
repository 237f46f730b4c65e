"""Reader for the extractive question-answering format: SQuAD-layout json (``squad_json``), which serves
SQuAD v1.1/v2.0, XQuAD, MLQA and TyDiQA-GoldP (filtered by language through ``TYDIQA_LANGS``). The
document loader ``load_squad_doc`` lives in common.py, as the dual-encoder readers share it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .common import _err, _get, _nonempty, load_squad_doc


TYDIQA_LANGS = {"arabic": "ar", "bengali": "bn", "english": "en", "finnish": "fi", "indonesian": "id",
                "korean": "ko", "russian": "ru", "swahili": "sw", "telugu": "te"}


def read_squad_json(path: Path, lang: str | None = None, check_offsets: bool = True) -> list[dict]:
    """SQuAD v1.1/v2.0, XQuAD, MLQA, TyDiQA-GoldP json. Offsets are checked against the context, as
    training labels come from them; scoring (``check_offsets=False``) reads only the answer texts, as the
    official evaluate scripts do.

    ``lang`` filters TyDiQA files by their id prefix (``english-...`` -> "en"); files without such
    prefixes are single-language (the file name carries the language) and ignore it.
    """
    doc = load_squad_doc(path)
    out = []
    for a, art in enumerate(_get(doc, "data", path, "top level", list)):
        for p, par in enumerate(_get(art, "paragraphs", path, f"data[{a}]", list)):
            context = _get(par, "context", path, f"data[{a}].paragraphs[{p}]", str)
            for q, qa in enumerate(_get(par, "qas", path, f"data[{a}].paragraphs[{p}]", list)):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                answers = []
                for ans in _get(qa, "answers", path, where, list):
                    text = _get(ans, "text", path, where, str)
                    start = _get(ans, "answer_start", path, where, int) if check_offsets else ans.get("answer_start")
                    # a negative start would slice from the end and could match there
                    if check_offsets and (start < 0 or context[start:start + len(text)] != text):
                        raise _err(path, where, f"answer {text!r} is not at answer_start {start!r} of the context",
                                   "answer_start must be the character offset of the answer text")
                    answers.append({"text": text, "answer_start": start})
                impossible = bool(qa.get("is_impossible", False))
                # Empty answers without is_impossible is legal: xtreme strips test answers.
                if impossible and answers:
                    raise _err(path, where, "is_impossible is true but 'answers' is not empty",
                               "SQuAD v2.0 keeps spans of unanswerable questions in 'plausible_answers'")
                out.append({"id": str(_get(qa, "id", path, where)), "title": art.get("title", ""),
                            "context": context, "question": _get(qa, "question", path, where, str),
                            "answers": answers, "is_impossible": impossible})
    if lang is not None and any(r["id"].split("-")[0] in TYDIQA_LANGS for r in out):
        out = [r for r in out if TYDIQA_LANGS.get(r["id"].split("-")[0]) == lang]
    return _nonempty(out, path, lang, "questions")


READERS: dict[str, Callable[..., list[dict]]] = {"squad_json": read_squad_json}
FAMILY = "span_qa"
