"""Readers for the token-tagging formats: jiant's CCG supertagging tsv (``ccg_tsv``), Universal
Dependencies CoNLL-U for POS tagging (``conllu``; tags are ``UPOS_TAGS``, multiword tokens fused as xtreme's
conversion does) and PAN-X / WikiANN NER in IOB (``panx_iob``; tags are ``PANX_TAGS``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator

from .common import _err, _label, _lines, _nonempty, _tab_fields


UPOS_TAGS = frozenset("ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split())
PANX_TAGS = frozenset(["O"] + [f"{p}-{t}" for p in "BI" for t in ("PER", "ORG", "LOC")])


# ---------------------------------------------------------------- tagging

def read_ccg_tsv(path: Path, lang: str | None = None) -> list[dict]:
    """jiant's CCG format: one sentence per line, ``tokens<TAB>supertags``, both space-separated."""
    out = []
    for n, parts in _tab_fields(path, 2, "'tokens<TAB>tags'", "one TAB per line"):
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


READERS: dict[str, Callable[..., list[dict]]] = {"ccg_tsv": read_ccg_tsv, "conllu": read_conllu,
                                                 "panx_iob": read_panx_iob}
FAMILY = "tagging"
