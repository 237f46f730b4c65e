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

Layout, as tasks/: one module per task family, each with its own ``READERS`` (format name -> reader) and
``FAMILY`` (its family, or a dict format name -> family where it serves two): classification.py (with
GLUE, STS-B being "regression"), multiple_choice.py, tagging.py, span_qa.py, retrieval.py (Tatoeba and
BUCC, read by folder, so no format names), dual_encoder.py and mlm.py; common.py holds ``DataError`` and the
shared helpers. This module joins the tables and re-exports the names other modules import.
"""
from __future__ import annotations

from typing import Callable

from . import classification, dual_encoder, mlm, multiple_choice, retrieval, span_qa, tagging
from .classification import (
    BINARY_LABELS, ENTAILMENT_LABELS, NLI_LABELS, read_anli_jsonl, read_glue_cola_tsv, read_glue_mrpc_tsv,
    read_glue_qnli_tsv, read_glue_rte_tsv, read_glue_sst2_tsv, read_glue_stsb_tsv, read_glue_wnli_tsv,
    read_mnli_jsonl, read_nli_txt, read_pawsx_tsv, read_qqp_tsv, read_xnli_mt_tsv, read_xnli_tsv,
)
from .common import DataError, load_squad_doc
from .dual_encoder import read_mewslix_jsonl, read_squad_sentences_json, read_xquad_r_json
from .mlm import read_text_lines
from .multiple_choice import (
    read_copa_jsonl, read_cosmosqa_csv, read_cosmosqa_jsonl, read_csqa_jsonl, read_hellaswag_jsonl, read_siqa_jsonl,
)
from .retrieval import read_bucc, read_tatoeba
from .span_qa import TYDIQA_LANGS, read_squad_json
from .tagging import PANX_TAGS, UPOS_TAGS, read_ccg_tsv, read_conllu, read_panx_iob

_MODULES = [classification, multiple_choice, tagging, span_qa, retrieval, dual_encoder, mlm]

READERS: dict[str, Callable[..., list[dict]]] = {name: read for m in _MODULES for name, read in m.READERS.items()}
READER_FAMILY: dict[str, str] = {
    name: m.FAMILY[name] if isinstance(m.FAMILY, dict) else m.FAMILY for m in _MODULES for name in m.READERS}

__all__ = [
    "READERS", "READER_FAMILY", "DataError", "load_squad_doc",
    "BINARY_LABELS", "ENTAILMENT_LABELS", "NLI_LABELS", "PANX_TAGS", "TYDIQA_LANGS", "UPOS_TAGS",
    "read_anli_jsonl", "read_bucc", "read_ccg_tsv", "read_conllu", "read_copa_jsonl", "read_cosmosqa_csv",
    "read_cosmosqa_jsonl", "read_csqa_jsonl", "read_glue_cola_tsv", "read_glue_mrpc_tsv", "read_glue_qnli_tsv",
    "read_glue_rte_tsv", "read_glue_sst2_tsv", "read_glue_stsb_tsv", "read_glue_wnli_tsv", "read_hellaswag_jsonl",
    "read_mewslix_jsonl", "read_mnli_jsonl", "read_nli_txt", "read_panx_iob", "read_pawsx_tsv", "read_qqp_tsv",
    "read_siqa_jsonl", "read_squad_json", "read_squad_sentences_json", "read_tatoeba", "read_text_lines",
    "read_xnli_mt_tsv", "read_xnli_tsv", "read_xquad_r_json",
]
