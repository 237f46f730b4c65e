"""Readers for the sentence-retrieval data sets: LASER Tatoeba v1 (``read_tatoeba``) and BUCC 2018
(``read_bucc``). They read a folder per language rather than one file, so they have no format name in
``READERS``: tasks/retrieval.py calls them directly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .common import DataError, _err, _lines, _nonempty, _tab_fields


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
    out = [(n, a.strip(), b.strip()) for n, (a, b) in _tab_fields(path, 2, "2 tab-separated fields",
                                                                       "write 'ID<TAB>value'")]
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


READERS: dict[str, Callable[..., list[dict]]] = {}  # read_tatoeba and read_bucc take a folder: no format names
FAMILY = "retrieval"
