"""Readers for the datasets' original download formats, returning plain dicts per task family.

Schemas (every reader returns a non-empty list of these, or raises ``DataError``):
  classification   {"id", "text_a", "text_b" (str|None), "label" (str|None)}
  regression       {"id", "text_a", "text_b" (str|None), "label" (float|None)}
  multiple_choice  {"id", "context", "question", "choices" (list[str]), "label" (int|None)}
  tagging          {"id", "tokens" (list[str]), "tags" (list[str]|None)}
  span_qa          {"id", "title", "context", "question", "answers" [{"text", "answer_start"}],
                    "is_impossible"}
  mlm              {"id", "text"}
Every reader is ``read_xxx(path, lang=None)``; ``READERS`` maps a format name to it and
``READER_FAMILY`` the name to its schema. ``lang`` filters only where a file mixes languages
(XNLI tsv; TyDiQA ids) or changes parsing (CoNLL-U); per-language files ignore it.
Malformed input raises ``DataError("file:line: what is wrong; how to fix")``; whole-document JSON
(SQuAD family) reports a JSON path such as ``data[0].paragraphs[2].qas[1]`` instead of a line.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator


class DataError(ValueError):
    """A data file is malformed or empty; the message says where and how to fix it."""


NLI_LABELS = ("entailment", "neutral", "contradiction")
BINARY_LABELS = ("0", "1")
UPOS_TAGS = frozenset("ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split())
PANX_TAGS = frozenset(["O"] + [f"{p}-{t}" for p in "BI" for t in ("PER", "ORG", "LOC")])
TYDIQA_LANGS = {"arabic": "ar", "bengali": "bn", "english": "en", "finnish": "fi", "indonesian": "id",
                "korean": "ko", "russian": "ru", "swahili": "sw", "telugu": "te"}
# XNLI-MT train files write the contradiction class as "contradictory" (xtreme utils_preprocess maps it).
_NLI_ALIASES = {"contradictory": "contradiction"}
_ANLI_LABELS = {"e": "entailment", "n": "neutral", "c": "contradiction"}


def _err(path: Path, where: Any, what: str, fix: str) -> DataError:
    return DataError(f"{path}:{where}: {what}; {fix}")


def _nonempty(records: list[dict], path: Path, lang: str | None = None, what: str = "records") -> list:
    if not records:
        flt = f" for language {lang!r}" if lang else ""
        raise DataError(f"{path}: no {what} found{flt}; check the file and the language filter")
    return records


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    # newline="\n": universal newlines would also split at a lone "\r" inside a field. utf-8-sig
    # drops a BOM if an editor added one and is plain utf-8 otherwise.
    with open(path, encoding="utf-8-sig", newline="\n") as f:
        for n, line in enumerate(f, 1):
            yield n, line.rstrip("\n").removesuffix("\r")


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _err(path, n, f"invalid JSON ({e.msg} at column {e.colno})",
                       "each line must hold one complete JSON object") from None
        if not isinstance(obj, dict):
            raise _err(path, n, f"expected a JSON object, got {type(obj).__name__}", "one object per line")
        yield n, obj


def _get(obj: dict, key: str, path: Path, where: Any) -> Any:
    if key not in obj:
        raise _err(path, where, f"missing field {key!r}", f"the record needs {key!r} (original format)")
    return obj[key]


def _label(value: str, allowed, path: Path, where: Any, aliases: dict | None = None) -> str:
    value = (aliases or {}).get(value, value)
    if value not in allowed:
        raise _err(path, where, f"label {value!r} is not one of {sorted(allowed)}", "fix or drop the record")
    return value


def _tsv(path: Path, required: tuple[str, ...], join_broken: bool = False,
         ragged: bool = False) -> Iterator[tuple[int, dict]]:
    """Header-driven tab-separated rows, no quote processing (QUOTE_NONE: XNLI/MNLI text holds quotes).

    ``ragged`` accepts rows that stop early after all required columns: SNLI/MNLI train rows omit
    the empty label2..label5 annotator columns.

    ``join_broken`` repairs one known defect: the pre-2019 GLUE QQP release wrote questions with an
    embedded line break as a csv-quoted field ("...\\n"), so one record spans two lines.
    """
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: empty file; expected a header line naming the columns")
    cols = first[1].split("\t")
    missing = [c for c in required if c not in cols]
    if missing:
        raise _err(path, 1, f"header lacks column(s) {missing} (found {cols})", "use the original file with its header")
    need = max(cols.index(c) for c in required) + 1
    for n, line in lines:
        if not line.strip():
            continue  # a trailing blank line
        fields = line.split("\t")
        while join_broken and len(fields) < len(cols) and fields[-1].startswith('"'):
            nxt = next(lines, None)
            if nxt is None:
                break
            rest = nxt[1].split("\t")
            fields = fields[:-1] + [fields[-1] + "\n" + rest[0]] + rest[1:]
        if ragged and need <= len(fields) < len(cols):
            fields += [""] * (len(cols) - len(fields))
        if len(fields) != len(cols):
            raise _err(path, n, f"expected {len(cols)} tab-separated columns as in the header, found {len(fields)}",
                       "fields must not contain tabs or line breaks; re-download the original file")
        if join_broken:
            fields = [f[1:-1].replace('""', '"').strip() if "\n" in f and f[:1] == f[-1:] == '"' else f
                      for f in fields]
        yield n, dict(zip(cols, fields))


def _pair(id_: str, a: str, b: str | None, label: str | None) -> dict:
    return {"id": id_, "text_a": a, "text_b": b, "label": label}


# ---------------------------------------------------------------- classification

def read_mnli_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    out = []
    for n, obj in _jsonl(path):
        gold = obj.get("gold_label") or None  # unlabeled test files
        if gold == "-":
            continue  # no annotator majority: MNLI/SNLI leave these out of training and scoring
        label = None if gold is None else _label(gold, NLI_LABELS, path, n)
        out.append(_pair(str(_get(obj, "pairID", path, n)), _get(obj, "sentence1", path, n),
                         _get(obj, "sentence2", path, n), label))
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
        out.append(_pair(str(_get(obj, "uid", path, n)), _get(obj, "context", path, n),
                         _get(obj, "hypothesis", path, n), label))
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
        ctx_b, endings = _get(obj, "ctx_b", path, n), _get(obj, "endings", path, n)
        if not isinstance(endings, list) or not endings:
            raise _err(path, n, "'endings' must be a non-empty list", "use the original HellaSwag jsonl")
        out.append(_mc(str(_get(obj, "ind", path, n)), _get(obj, "ctx_a", path, n), "",
                       [f"{ctx_b} {e}".strip() for e in endings], obj.get("label"), path, n))
    return _nonempty(out, path)


def read_csqa_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    """CommonsenseQA: question.stem, 5 choices labelled A-E, answerKey -> index (absent in test)."""
    out = []
    for n, obj in _jsonl(path):
        q = _get(obj, "question", path, n)
        choices = _get(q, "choices", path, n)
        keys = [c.get("label") for c in choices]
        key = obj.get("answerKey") or None
        if key is not None and key not in keys:
            raise _err(path, n, f"answerKey {key!r} is not one of the choice labels {keys}", "fix answerKey")
        out.append(_mc(str(_get(obj, "id", path, n)), "", _get(q, "stem", path, n),
                       [_get(c, "text", path, n) for c in choices], None if key is None else keys.index(key),
                       path, n))
    return _nonempty(out, path)


_COSMOS_FIELDS = ("id", "context", "question", "answer0", "answer1", "answer2", "answer3")


def _cosmos(row: dict, path: Path, where: Any) -> dict:
    vals = [_get(row, k, path, where) for k in _COSMOS_FIELDS]
    label = row.get("label")
    return _mc(vals[0], vals[1], vals[2], vals[3:], None if label in (None, "") else label, path, where)


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
    return _nonempty(out, path)


def read_cosmosqa_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    return _nonempty([_cosmos(obj, path, n) for n, obj in _jsonl(path)], path)


# ---------------------------------------------------------------- tagging

def read_ccg_tsv(path: Path, lang: str | None = None) -> list[dict]:
    """jiant's CCG format: one sentence per line, ``tokens<TAB>supertags``, both space-separated."""
    out = []
    for n, line in _lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise _err(path, n, f"expected 'tokens<TAB>tags', found {len(parts)} tab-separated fields",
                       "one TAB per line")
        tokens, tags = parts[0].split(), parts[1].split()
        if len(tokens) != len(tags) or not tokens:
            raise _err(path, n, f"{len(tokens)} tokens but {len(tags)} tags", "give exactly one supertag per token")
        out.append({"id": str(len(out)), "tokens": tokens, "tags": tags})
    return _nonempty(out, path)


# jiant/xtreme ud-conversion-tools (conllu_to_conll.py --replace_subtokens_with_fused_forms):
# a multiword token keeps its fused surface form and the UPOS of one sub-token, the one closest to
# the root; ties go to the first by this precedence (a few languages have their own list).
_POS_PRECEDENCE = {
    "default": "VERB NOUN PROPN PRON ADJ NUM ADV INTJ AUX ADP DET PART CCONJ SCONJ X PUNCT".split(),
    "es": "VERB AUX PRON ADP DET".split(),
    "fr": "VERB AUX PRON NOUN ADJ ADV ADP DET PART SCONJ CONJ".split(),
    "it": "VERB AUX ADV PRON ADP DET INTJ".split(),
}


_CONLLU_ID = re.compile(r"\d+(-\d+|\.\d+)?")


def _fused_head(span: list[int], parents: dict[int, set], upos: dict[int, str], lang: str | None) -> int:
    def n_ancestors(i: int) -> int:
        # The reference graph holds basic HEAD edges plus enhanced DEPS edges, so both count here.
        seen, stack = set(), [i]
        while stack:
            for p in parents.get(stack.pop(), ()):
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return len(seen - {i})

    depth = {i: n_ancestors(i) for i in span}
    highest = [i for i in span if depth[i] == min(depth.values())]
    order = _POS_PRECEDENCE.get(lang or "", _POS_PRECEDENCE["default"])
    return min(highest, key=lambda i: order.index(upos[i]) if upos[i] in order else len(order))


def _conllu_sentence(rows: list[tuple[int, list[str]]], path: Path, lang: str | None):
    words, spans, parents = {}, {}, {}
    for n, c in rows:
        if "." in c[0]:
            continue  # empty node of the enhanced graph: not a surface token (the reference skips it)
        if "-" in c[0]:
            a, b = c[0].split("-")
            spans[int(a)] = (int(b), c[1], n)
            continue
        i = int(c[0])
        if i != len(words) + 1:
            raise _err(path, n, f"word id {i} out of sequence (expected {len(words) + 1})", "ids must run 1..n")
        if c[3] not in UPOS_TAGS:
            raise _err(path, n, f"UPOS {c[3]!r} is not a UD tag", f"use one of {sorted(UPOS_TAGS)}")
        words[i] = (c[1], c[3])
        heads = [c[6]] + [d.split(":")[0] for d in c[8].split("|") if c[8] != "_"]
        parents[i] = {int(h) for h in heads if h.isdigit()}
    tokens, tags, i = [], [], 1
    while i <= len(words):
        end, form, n = spans.pop(i, (i, words[i][0], 0))
        if not i <= end <= len(words):
            raise _err(path, n, f"multiword range {i}-{end} exceeds the sentence", "fix the range")
        span = list(range(i, end + 1))
        head = _fused_head(span, parents, {j: words[j][1] for j in span}, lang)
        # xtreme's remove_empty_space: spaces and ZWNJ inside a token are deleted.
        tokens.append(form.replace("\u200c", "").replace(" ", ""))
        tags.append(words[head][1])
        i = end + 1
    if spans:  # a range that starts inside another range or after the last word
        a, (b, _, n) = next(iter(spans.items()))
        raise _err(path, n, f"multiword range {a}-{b} overlaps another or lies past the last word", "fix the range")
    if not words:
        raise _err(path, rows[0][0], "sentence without word lines", "every sentence needs lines with IDs 1..n")
    return tokens, tags


def _blocks(path: Path) -> Iterator[list[tuple[int, str]]]:
    """Blank-line separated blocks of (line number, line): CoNLL-U sentences, PAN-X sentences."""
    block = []
    for n, line in _lines(path):
        if line.strip():
            block.append((n, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


def read_conllu(path: Path, lang: str | None = None) -> list[dict]:
    """UD CoNLL-U: tokens = FORM, tags = UPOS, multiword tokens fused as xtreme's conversion does.

    Ids come from ``# sent_id``. Sentences whose forms are withheld ("_", license-restricted
    treebanks) are dropped, as xtreme's udpos_preprocess does.
    """
    out, withheld = [], False
    for block in _blocks(path):
        sent_id = next((line.split("=", 1)[-1].strip() for _, line in block if line.startswith("# sent_id")), None)
        rows = [(n, line.split("\t")) for n, line in block if not line.startswith("#")]
        for n, cols in rows:
            if len(cols) != 10 or not _CONLLU_ID.fullmatch(cols[0]):
                raise _err(path, n, f"expected 10 tab-separated CoNLL-U columns with a numeric ID, found {len(cols)}",
                           "separate columns with single TABs and sentences with a blank line")
        if rows:
            tokens, tags = _conllu_sentence(rows, path, lang)
            if sum(t == "_" for t in tokens) < max(len(tokens) - 1, 1):
                out.append({"id": sent_id or f"{path.stem}-{len(out)}", "tokens": tokens, "tags": tags})
            else:
                withheld = True
    # A treebank whose forms are all withheld (UD_English-ESL, UD_Japanese-BCCWJ, ...) contributes nothing,
    # as in xtreme; the caller fails only when a whole split ends up empty.
    return out if out or withheld else _nonempty(out, path, what="sentences")


def read_panx_iob(path: Path, lang: str | None = None) -> list[dict]:
    """PAN-X / WikiANN: ``lang:token<TAB>tag``, blank line between sentences; tags may be absent (test)."""
    out, has_tags = [], None
    for block in _blocks(path):
        tokens, tags = [], []
        for n, line in block:
            parts = line.split("\t")
            if len(parts) > 2 or ":" not in parts[0] or not parts[0].split(":", 1)[1]:
                raise _err(path, n, "expected 'lang:token' optionally followed by TAB and an IOB tag",
                           "write one token per line as in the PAN-X release")
            has_tags = len(parts) == 2 if has_tags is None else has_tags
            if has_tags != (len(parts) == 2):
                raise _err(path, n, "some lines have a tag column and others do not", "tag every token or none")
            tokens.append(parts[0].split(":", 1)[1])  # only up to the first colon: tokens may contain ':'
            tags += [_label(parts[1], PANX_TAGS, path, n)] if has_tags else []
        out.append({"id": str(len(out)), "tokens": tokens, "tags": tags if has_tags else None})
    return _nonempty(out, path, what="sentences")


# ---------------------------------------------------------------- span QA

def load_squad_doc(path: Path) -> dict:
    """A SQuAD-layout json document ({"data": [...]}), or a DataError naming the file and line."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise _err(path, e.lineno, f"invalid JSON ({e.msg})", "re-download the file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise _err(path, 1, "expected an object with a 'data' list", "use the SQuAD json layout")
    return doc


def read_squad_json(path: Path, lang: str | None = None) -> list[dict]:
    """SQuAD v1.1/v2.0, XQuAD, MLQA, TyDiQA-GoldP json. Offsets are checked against the context.

    ``lang`` filters TyDiQA files by their id prefix (``english-...`` -> "en"); files without such
    prefixes are single-language (the file name carries the language) and ignore it.
    """
    doc = load_squad_doc(path)
    out = []
    for a, art in enumerate(doc["data"]):
        for p, par in enumerate(_get(art, "paragraphs", path, f"data[{a}]")):
            context = _get(par, "context", path, f"data[{a}].paragraphs[{p}]")
            for q, qa in enumerate(_get(par, "qas", path, f"data[{a}].paragraphs[{p}]")):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                answers = []
                for ans in _get(qa, "answers", path, where):
                    text, start = _get(ans, "text", path, where), _get(ans, "answer_start", path, where)
                    if not isinstance(start, int) or context[start:start + len(text)] != text:
                        raise _err(path, where, f"answer {text!r} is not at answer_start {start!r} of the context",
                                   "answer_start must be the character offset of the answer text")
                    answers.append({"text": text, "answer_start": start})
                impossible = bool(qa.get("is_impossible", False))
                # Empty answers without is_impossible is legal: xtreme strips test answers.
                if impossible and answers:
                    raise _err(path, where, "is_impossible is true but 'answers' is not empty",
                               "SQuAD v2.0 keeps spans of unanswerable questions in 'plausible_answers'")
                out.append({"id": str(_get(qa, "id", path, where)), "title": art.get("title", ""),
                            "context": context, "question": _get(qa, "question", path, where),
                            "answers": answers, "is_impossible": impossible})
    if lang is not None and any(r["id"].split("-")[0] in TYDIQA_LANGS for r in out):
        out = [r for r in out if TYDIQA_LANGS.get(r["id"].split("-")[0]) == lang]
    return _nonempty(out, path, lang, "questions")


# ---------------------------------------------------------------- retrieval

def read_tatoeba(dir: Path, lang3: str) -> tuple[list[str], list[str]]:
    """LASER Tatoeba v1: ``tatoeba.<xxx>-eng.<xxx>`` and ``.eng``, line i translates line i."""
    src_path, eng_path = Path(dir) / f"tatoeba.{lang3}-eng.{lang3}", Path(dir) / f"tatoeba.{lang3}-eng.eng"
    src, eng = ([line.strip() for _, line in _lines(p)] for p in (src_path, eng_path))
    if len(src) != len(eng):
        raise DataError(f"{src_path}: {len(src)} lines but {eng_path.name} has {len(eng)}; "
                        "the two files must be line-aligned (re-download them)")
    return _nonempty(src, src_path, what="sentences"), eng


# xtreme renamed the BUCC 2018 release: "sample" (has gold) became dev, "training" became test.
_BUCC_SPLITS = {"dev": ("dev", "sample"), "test": ("test", "training"),
                "sample": ("sample", "dev"), "training": ("training", "test")}


def _bucc_file(path: Path) -> list[tuple[int, str, str]]:
    """Lines ``ID<TAB>sentence`` (or ``srcID<TAB>trgID`` in .gold) as (line number, a, b)."""
    out = []
    for n, line in _lines(path):
        parts = line.split("\t")
        if line.strip() and len(parts) != 2:
            raise _err(path, n, f"expected 2 tab-separated fields, found {len(parts)}", "write 'ID<TAB>value'")
        out += [(n, parts[0].strip(), parts[1].strip())] if line.strip() else []
    return _nonempty(out, path, what="lines")


def _bucc_sentences(path: Path) -> dict[str, str]:
    out = {}
    for n, id_, sent in _bucc_file(path):
        if id_ in out:
            raise _err(path, n, f"duplicate sentence id {id_!r}", "ids must be unique")
        out[id_] = sent
    return out


def read_bucc(dir: Path, lang: str, split: str):
    """BUCC 2018 ``{lang}-en.{split}.{lang|en|gold}`` (xtreme names) or the release's sample/training names.

    Returns (src: id -> sentence, trg: id -> sentence, gold: {(src_id, trg_id)} or None without a gold file).
    """
    if split not in _BUCC_SPLITS:
        raise DataError(f"unknown BUCC split {split!r}; use one of {sorted(_BUCC_SPLITS)}")
    tried = []
    for folder in (Path(dir), Path(dir) / f"{lang}-en"):
        for name in _BUCC_SPLITS[split]:
            stem = folder / f"{lang}-en.{name}"
            src_p, trg_p, gold_p = (Path(f"{stem}.{ext}") for ext in (lang, "en", "gold"))
            tried.append(str(src_p))
            if src_p.exists() and trg_p.exists():
                src, trg = _bucc_sentences(src_p), _bucc_sentences(trg_p)
                if not gold_p.exists():
                    return src, trg, None
                gold = set()
                for n, s, t in _bucc_file(gold_p):
                    if s not in src or t not in trg:
                        raise _err(gold_p, n, f"gold pair ({s}, {t}) names an unknown sentence id",
                                   f"ids must occur in {src_p.name} and {trg_p.name}")
                    gold.add((s, t))
                return src, trg, gold
    raise DataError(f"no BUCC files for {lang}-en split {split!r}; looked for {tried} (and the .en twin)")


# ---------------------------------------------------------------- GLUE (download_glue_data.py layout)
# Train/dev files only: GLUE's test.tsv files have no labels and a different column layout.

def read_glue_cola_tsv(path: Path, lang: str | None = None) -> list[dict]:
    """CoLA train/dev: no header; ``source<TAB>label<TAB>original label<TAB>sentence`` (label 0/1)."""
    out = []
    for n, line in _lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise _err(path, n, f"expected 4 tab-separated columns (source, label, original label, sentence), "
                       f"found {len(fields)}", "use CoLA's train.tsv/dev.tsv (test.tsv has no labels)")
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


# ---------------------------------------------------------------- COPA / XCOPA / Social IQa

_COPA_QUESTIONS = ("cause", "effect")


def read_copa_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    """SuperGLUE COPA and XCOPA (same fields): premise, choice1, choice2, question (cause|effect), label,
    idx. ``question`` stays the bare word; the multiple-choice family turns it into a question."""
    out = []
    for n, obj in _jsonl(path):
        question = _get(obj, "question", path, n)
        if question not in _COPA_QUESTIONS:
            raise _err(path, n, f"question {question!r} is not 'cause' or 'effect'", "fix the record")
        out.append(_mc(str(_get(obj, "idx", path, n)), _get(obj, "premise", path, n), question,
                       [_get(obj, "choice1", path, n), _get(obj, "choice2", path, n)], obj.get("label"), path, n))
    return _nonempty(out, path)


def read_text_lines(path: Path, lang: str | None = None) -> list[dict]:
    """Plain text for masked LM, one sentence or paragraph per line (Wikipedia extracts); blank lines are
    skipped and the line number is the id."""
    out = [{"id": str(n), "text": line.strip()} for n, line in _lines(path) if line.strip()]
    return _nonempty(out, path, what="non-blank lines")


def read_siqa_jsonl(path: Path, lang: str | None = None) -> list[dict]:
    """Social IQa v1.4 ``socialIQa_v1.4_{trn,dev,tst}.jsonl``: context, question, answerA-C, correct A|B|C.

    The files carry no ids, so the record index is the id."""
    out = []
    for n, obj in _jsonl(path):
        correct = obj.get("correct") or None
        if correct is not None and correct not in "ABC":
            raise _err(path, n, f"'correct' is {correct!r}, not A, B or C", "fix the record")
        out.append(_mc(str(len(out)), _get(obj, "context", path, n), _get(obj, "question", path, n),
                       [_get(obj, f"answer{k}", path, n) for k in "ABC"],
                       None if correct is None else "ABC".index(correct), path, n))
    return _nonempty(out, path)


READERS: dict[str, Callable[..., list[dict]]] = {
    "mnli_jsonl": read_mnli_jsonl, "mnli_txt": read_nli_txt, "snli_txt": read_nli_txt,
    "xnli_tsv": read_xnli_tsv, "xnli_mt_tsv": read_xnli_mt_tsv, "anli_jsonl": read_anli_jsonl,
    "glue_qqp_tsv": read_qqp_tsv, "pawsx_tsv": read_pawsx_tsv,
    "hellaswag_jsonl": read_hellaswag_jsonl, "csqa_jsonl": read_csqa_jsonl,
    "cosmosqa_csv": read_cosmosqa_csv, "cosmosqa_jsonl": read_cosmosqa_jsonl,
    "ccg_tsv": read_ccg_tsv, "conllu": read_conllu, "panx_iob": read_panx_iob,
    "squad_json": read_squad_json,
    "glue_cola_tsv": read_glue_cola_tsv, "glue_sst2_tsv": read_glue_sst2_tsv, "glue_mrpc_tsv": read_glue_mrpc_tsv,
    "glue_qnli_tsv": read_glue_qnli_tsv, "glue_rte_tsv": read_glue_rte_tsv, "glue_wnli_tsv": read_glue_wnli_tsv,
    "glue_stsb_tsv": read_glue_stsb_tsv,
    "copa_jsonl": read_copa_jsonl, "xcopa_jsonl": read_copa_jsonl, "siqa_jsonl": read_siqa_jsonl,
    "text_lines": read_text_lines,
}
READER_FAMILY: dict[str, str] = {
    **dict.fromkeys(("mnli_jsonl", "mnli_txt", "snli_txt", "xnli_tsv", "xnli_mt_tsv", "anli_jsonl",
                     "glue_qqp_tsv", "pawsx_tsv"), "classification"),
    **dict.fromkeys(("hellaswag_jsonl", "csqa_jsonl", "cosmosqa_csv", "cosmosqa_jsonl"), "multiple_choice"),
    **dict.fromkeys(("ccg_tsv", "conllu", "panx_iob"), "tagging"),
    "squad_json": "span_qa",
    **dict.fromkeys(("glue_cola_tsv", "glue_sst2_tsv", "glue_mrpc_tsv", "glue_qnli_tsv", "glue_rte_tsv",
                     "glue_wnli_tsv"), "classification"),
    "glue_stsb_tsv": "regression",  # the classification schema with a float label
    **dict.fromkeys(("copa_jsonl", "xcopa_jsonl", "siqa_jsonl"), "multiple_choice"),
    "text_lines": "mlm",
}

# The dual-encoder retrieval formats (XQuAD-R, Mewsli-X, SQuAD as sentence pairs) live in their own module,
# which adds them to READERS and READER_FAMILY above when it is imported (here, whichever module comes first).
from . import readers_retrieval  # noqa: E402,F401
