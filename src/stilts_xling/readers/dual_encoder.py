"""Readers for the dual-encoder retrieval tasks of XTREME-R (LAReQA on XQuAD-R, Mewsli-X) and their
English training data, in the original download formats; registered in `readers.READERS`.

Schema ``dual_encoder``: every record is {"id", "language", "query", "target", "candidate",
"candidate_context", "candidate_id"}. A query is relevant to a candidate when both carry the same
``target``, so one record can be
  a question            query + target (what it must retrieve), candidate fields None;
  a candidate           candidate (+ candidate_context, the second segment of a pair) + candidate_id,
                        target = a key it answers (a candidate answering several keys has one record per
                        key, answering none: target None), query None;
  a training pair       all fields: the question, its positive candidate, target = candidate_id.
Formats (file names as xtreme's download scripts leave them):
  squad_sentences_json  SQuAD v1.1 json -> pairs (question, answer sentence + paragraph); sentence breaks
                        from a paragraph's ``sentence_breaks`` or inferred (sentence_breaks.py), as
                        xtreme third_party/processors/lareqa.py RetrievalSquadProcessor.
  xquad_r_json          LAReQA ``xquad-r/{lang}.json`` -> questions and every sentence of their paragraphs,
                        as xtreme third_party/utils_lareqa.py load_data.
  mewslix_jsonl         Mewsli-X, by record layout: ``wikipedia_pairs-*.jsonl`` -> pairs;
                        ``wikinews_mentions-*.jsonl`` -> one question per mention;
                        ``candidate_set_entities.jsonl`` -> candidates; texts as xtreme
                        third_party/utils_mewslix.py preprocess_mention / preprocess_entity_description.
Malformed input raises ``DataError("file:line-or-json-path: what is wrong; how to fix")``.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Optional

from ..sentence_breaks import sentence_breaks
from .common import _err, _get, _jsonl, _nonempty, load_squad_doc

log = logging.getLogger(__name__)

# Mewsli-X marks the mention with braces; braces already in the sentence become parentheses first.
_MARK_LEFT, _MARK_RIGHT = "{", "}"
_BRACED = re.compile(r"\{(.*?)\}")


def _record(id_: str, language: str, query: Optional[str] = None, target: Optional[str] = None,
            candidate: Optional[str] = None, candidate_context: Optional[str] = None,
            candidate_id: Optional[str] = None) -> dict:
    return {"id": id_, "language": language, "query": query, "target": target, "candidate": candidate,
            "candidate_context": candidate_context, "candidate_id": candidate_id}


def _paragraphs(doc: dict, path: Path):
    """(json path, paragraph) for every paragraph, in file order."""
    for a, article in enumerate(doc["data"]):
        for p, paragraph in enumerate(_get(article, "paragraphs", path, f"data[{a}]")):
            yield f"data[{a}].paragraphs[{p}]", paragraph


def _breaks(paragraph: dict, context: str, path: Path, where: str, infer: bool) -> list[tuple[int, int]]:
    if "sentence_breaks" not in paragraph:
        if infer:
            return list(sentence_breaks(context))
        raise _err(path, where, "missing field 'sentence_breaks'",
                   "XQuAD-R files carry [start, end] sentence offsets per paragraph (LAReQA release)")
    breaks = paragraph["sentence_breaks"]
    if not isinstance(breaks, list) or not all(
            isinstance(b, list) and len(b) == 2 and all(isinstance(x, int) for x in b)
            and 0 <= b[0] <= b[1] <= len(context) for b in breaks):
        raise _err(path, f"{where}.sentence_breaks", "expected [start, end] character offsets inside the context",
                   "each break is a pair of integers with 0 <= start <= end <= len(context)")
    return [(start, end) for start, end in breaks]


def _sentence_of(offset: int, breaks: list[tuple[int, int]]) -> Optional[int]:
    """Index of the first sentence holding character `offset`, None when it falls between sentences."""
    return next((i for i, (start, end) in enumerate(breaks) if start <= offset < end), None)


def _recoverable(context: str, start: int, text: str) -> bool:
    """RetrievalSquadProcessor keeps an answer only when its whitespace-tokenized span, rebuilt from the
    context, contains the answer text (with U+202F counted as whitespace)."""
    def tokens_with_offsets(s: str) -> tuple[list[str], list[int]]:
        tokens, owner, gap = [], [], True
        for ch in s:
            if ch in " \t\r\n\u202f":
                gap = True
            else:
                if gap:
                    tokens.append(ch)
                else:
                    tokens[-1] += ch
                gap = False
            owner.append(len(tokens) - 1)
        return tokens, owner

    tokens, owner = tokens_with_offsets(context)
    if not text or start + len(text) > len(context):
        return False
    first, last = owner[start], owner[start + len(text) - 1]
    return " ".join(text.split()) in " ".join(tokens[first:last + 1])


def read_squad_sentences_json(path: Path, lang: str | None = None) -> list[dict]:
    """SQuAD-format json -> (question, answer sentence + paragraph) pairs, LAReQA's training data.

    As xtreme RetrievalSquadProcessor: the first answer of each question; its sentence is the first
    (inferred) sentence holding ``answer_start``; questions whose answer falls between sentences or
    cannot be rebuilt from the context are skipped (logged). ``candidate_id`` = "<paragraph number>_
    <sentence index>", paragraphs numbered from 1 over the file, so questions about one sentence share it.
    """
    path = Path(path)
    out, skipped, language = [], 0, lang or "en"
    for number, (where, paragraph) in enumerate(_paragraphs(load_squad_doc(path), path), start=1):
        context = _get(paragraph, "context", path, where)
        breaks = _breaks(paragraph, context, path, where, infer=True)
        for q, qa in enumerate(_get(paragraph, "qas", path, where)):
            answers = _get(qa, "answers", path, f"{where}.qas[{q}]")
            if not answers:  # a SQuAD v2.0 unanswerable question has no answer sentence
                skipped += 1
                continue
            start, text = _get(answers[0], "answer_start", path, where), _get(answers[0], "text", path, where)
            index = _sentence_of(start, breaks) if isinstance(start, int) else None
            if index is None or not _recoverable(context, start, text):
                skipped += 1
                continue
            key = f"{number}_{index}"
            sentence = context[breaks[index][0]:breaks[index][1]]
            out.append(_record(str(_get(qa, "id", path, f"{where}.qas[{q}]")), language,
                               query=_get(qa, "question", path, f"{where}.qas[{q}]"), target=key,
                               candidate=sentence, candidate_context=context, candidate_id=key))
    if skipped:
        log.info("%s: skipped %d questions without an answer sentence (as xtreme)", path, skipped)
    return _nonempty(out, path, what="question/answer-sentence pairs")


def read_xquad_r_json(path: Path, lang: str | None = None) -> list[dict]:
    """LAReQA's XQuAD-R ``{lang}.json``: SQuAD layout plus ``sentence_breaks`` per paragraph.

    As xtreme utils_lareqa.load_data / generate_examples, for one language (the file's stem when
    ``lang`` is None): question ``id`` = "<question id>_<lang>", ``target`` = the question id (its
    xling_id, shared by the translations of one question); candidates are every sentence of every
    paragraph with at least one usable question, ``candidate_id`` = "<lang>_<paragraph number>_<index>",
    paragraphs numbered from 1; a sentence answers the xling_ids of the questions whose answer sentence
    has the same text. Each question must have exactly one answer; one whose answer starts between
    sentences is skipped (logged), as there.
    """
    path = Path(path)
    language = lang or path.stem
    questions, candidates, skipped = [], [], 0
    for number, (where, paragraph) in enumerate(_paragraphs(load_squad_doc(path), path), start=1):
        context = _get(paragraph, "context", path, where)
        breaks = _breaks(paragraph, context, path, where, infer=False)
        sentences = [context[start:end] for start, end in breaks]
        answered: dict[str, list[str]] = {}  # answer sentence text -> xling_ids
        for q, qa in enumerate(_get(paragraph, "qas", path, where)):
            at = f"{where}.qas[{q}]"
            answers = _get(qa, "answers", path, at)
            if len(answers) != 1:
                raise _err(path, at, f"{len(answers)} answers", "LAReQA questions have exactly one answer")
            index = _sentence_of(_get(answers[0], "answer_start", path, at), breaks)
            if index is None:
                skipped += 1
                continue
            xling_id = str(_get(qa, "id", path, at))
            questions.append(_record(f"{xling_id}_{language}", language, query=_get(qa, "question", path, at),
                                     target=xling_id))
            answered.setdefault(sentences[index], []).append(xling_id)
        if not answered:  # xtreme adds a paragraph's sentences only through its questions
            continue
        for index, sentence in enumerate(sentences):
            cid = f"{language}_{number}_{index}"
            for target in dict.fromkeys(answered.get(sentence, [None])):
                candidates.append(_record(cid, language, target=target, candidate=sentence,
                                          candidate_context=context, candidate_id=cid))
    if skipped:
        log.info("%s: skipped %d questions whose answer starts between sentences (as xtreme)", path, skipped)
    return _nonempty(questions, path, lang, "questions") + candidates


# ---------------------------------------------------------------- Mewsli-X

def _spans(obj: Any, text: str, path: Path, where: str, field: str) -> list[tuple[int, int]]:
    spans = _get(obj, field, path, where) if isinstance(obj, dict) else None
    if not isinstance(spans, list) or not all(
            isinstance(s, dict) and isinstance(s.get("start"), int) and isinstance(s.get("end"), int)
            and 0 <= s["start"] < s["end"] <= len(text) for s in spans):
        raise _err(path, where, f"{field} must be {{start, end}} offsets with 0 <= start < end <= len(text)",
                   "use the Mewsli-X release files (an empty text means the article text was not restored: "
                   "run get-mewsli-x.sh, which writes wikinews_mentions-*.jsonl)")
    return [(s["start"], s["end"]) for s in spans]


def _normalize(text: str) -> str:
    # utils_mewslix: newlines to spaces, one pass of "  " -> " " (not a full collapse), then strip.
    return " ".join(text.splitlines()).replace("  ", " ").strip()


def mention_query(context: dict, mention: dict, path: Path, where: str) -> str:
    """xtreme utils_mewslix.preprocess_mention: the sentence holding the mention, the mention wrapped
    in " { ... } " (braces already there escaped to parentheses) and repeated in front: "m: left { m } right"."""
    text = _get(context, "text", path, where)
    span = _get(mention, "mention_span", path, where)
    start, end, surface = (_get(span, k, path, where) for k in ("start", "end", "text"))
    if not (isinstance(start, int) and isinstance(end, int) and text[start:end] == surface and start < end):
        raise _err(path, where, f"mention {surface!r} is not at [{start}, {end}) of the context text",
                   "an empty context text means the article text was not restored: run get-mewsli-x.sh")
    sentences = _spans(context, text, path, where, "sentence_spans")
    focus = next(((s, e) for s, e in sentences if s <= start < e and s < end <= e), None)
    if focus is None:
        raise _err(path, where, f"mention {surface!r} is not inside one sentence",
                   "Mewsli-X mentions lie within one sentence span")
    left = _BRACED.sub(r"(\1)", text[focus[0]:start])
    right = _BRACED.sub(r"(\1)", text[end:focus[1]])
    return _normalize(f"{surface}: {left} {_MARK_LEFT} {surface} {_MARK_RIGHT} {right}")


def entity_text(entity: dict, path: Path, where: str) -> str:
    """xtreme utils_mewslix.preprocess_entity_description: the description's sentences joined by spaces."""
    description = _get(entity, "description", path, where)
    spans = _spans(entity, description, path, where, "sentence_spans")
    return _normalize(" ".join(description[s:e] for s, e in spans))


def _mewslix_records(obj: dict, path: Path, n: int, lang: str | None) -> list[dict]:
    if "contextual_mention" in obj:  # wikipedia_pairs-*.jsonl: one (mention, entity) training pair
        cm, entity = obj["contextual_mention"], _get(obj, "entity", path, n)
        context, mention = _get(cm, "context", path, n), _get(cm, "mention", path, n)
        eid = str(_get(entity, "entity_id", path, n))
        return [_record(str(_get(mention, "example_id", path, n)), str(_get(context, "language", path, n)),
                        query=mention_query(context, mention, path, str(n)), target=eid,
                        candidate=entity_text(entity, path, str(n)), candidate_id=eid)]
    if "mentions" in obj:  # wikinews_mentions-*.jsonl: one article, its mentions are the questions
        context = _get(obj, "context", path, n)
        language = str(_get(context, "language", path, n))
        if lang is not None and language != lang:
            return []
        return [_record(str(_get(m, "example_id", path, n)), language, query=mention_query(context, m, path, str(n)),
                        target=str(_get(m, "entity_id", path, n))) for m in obj["mentions"]]
    if "entity_id" in obj:  # candidate_set_entities.jsonl: the fixed candidate set
        eid = str(obj["entity_id"])
        return [_record(eid, str(_get(obj, "description_language", path, n)), target=eid,
                        candidate=entity_text(obj, path, str(n)), candidate_id=eid)]
    raise _err(path, n, "not a Mewsli-X record (no 'contextual_mention', 'mentions' or 'entity_id')",
               "use wikipedia_pairs-*.jsonl, wikinews_mentions-*.jsonl or candidate_set_entities.jsonl")


def read_mewslix_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    """Any Mewsli-X file (layout told by each record's keys); ``lang`` keeps one language's mentions."""
    path = Path(path)
    out = [r for n, obj in _jsonl(path) for r in _mewslix_records(obj, path, n, lang)]
    return _nonempty(out, path, lang)


READERS: dict[str, Callable[..., list[dict]]] = {
    "squad_sentences_json": read_squad_sentences_json, "xquad_r_json": read_xquad_r_json,
    "mewslix_jsonl": read_mewslix_jsonl,
}
FAMILY = "dual_encoder"
