"""Extractive (span) QA: SQuAD v1.1/v2.0, XQuAD, MLQA, TyDiQA-GoldP.

A linear start/end head on every token. Long contexts are cut into overlapping windows; predictions
take the best-scoring span over all windows of a question and slice the answer from the original
context by character offsets, so no tokenizer-specific detokenization is involved. Windowing, n-best
search, the "max context" rule and the SQuAD v2 null score follow the transformers SQuAD processor
that XTREME and jiant (the paper's code) both use.
"""
from __future__ import annotations

import math
import unicodedata
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..config import TrainConfig
from ..languages import XTREME_LANGUAGES
from .base import FileSource, HubSource, TaskSpec

# XTREME run_squad.py / jiant squad_style defaults.
DOC_STRIDE = 128  # tokens between the starts of consecutive windows (old HF processor meaning, not overlap)
MAX_QUERY_LENGTH = 64  # longer questions are cut to their first 64 tokens
N_BEST = 20  # top start and top end logits combined per window
MAX_ANSWER_LENGTH = 30  # tokens

_NEG = -1e4  # masks padding logits; finite so it survives bf16/fp16 autocast


class QAPrediction(str):
    """The answer text (a plain string for metrics and submission files) carrying `null_diff`:
    the null score minus the best span score (SQuAD v2 answers "" when it is > 0, and the official
    script tunes its best threshold on it). +inf when no valid span exists."""

    null_diff: float

    def __new__(cls, text: str, null_diff: float = math.inf) -> QAPrediction:  # default: pickle/copy
        obj = super().__new__(cls, text)
        obj.null_diff = null_diff
        return obj


def answers_of(ex: dict) -> list[dict]:
    """[{"text", "answer_start"}]; hub rows hold columns {"text": [...], "answer_start": [...]} instead
    of the file readers' list of records, so both shapes are accepted here."""
    ans = ex.get("answers") or []
    if isinstance(ans, dict):
        return [{"text": t, "answer_start": int(s)} for t, s in zip(ans["text"], ans["answer_start"])]
    return ans


def _v1(predictions: dict, golds: dict, lang: str) -> dict:
    return metrics.squad_scores(predictions, golds)


def _mlqa(predictions: dict, golds: dict, lang: str) -> dict:
    return metrics.squad_scores(predictions, golds, lang=lang)


def _v2(predictions: dict, golds: dict, lang: str) -> dict:
    diffs = {q: getattr(p, "null_diff", None) for q, p in predictions.items()}
    na = diffs if all(d is not None for d in diffs.values()) else None
    return metrics.squad_v2_scores({q: str(p) for q, p in predictions.items()}, golds, na)


# scorer -> (metric function, its exact-match key, whether unanswerable questions exist). XQuAD and
# TyDiQA use the SQuAD v1.1 script (English normalisation for every language), as XTREME does.
_SCORERS = {
    "squad_v1": (_v1, "exact_match", False),
    "mlqa": (_mlqa, "exact_match", False),
    "squad_v2": (_v2, "exact", True),
}


class SpanQAFamily:
    name = "span_qa"

    def __init__(self, doc_stride: int = DOC_STRIDE, max_query_length: int = MAX_QUERY_LENGTH,
                 n_best: int = N_BEST, max_answer_length: int = MAX_ANSWER_LENGTH):
        self.doc_stride, self.max_query_length = doc_stride, max_query_length
        self.n_best, self.max_answer_length = n_best, max_answer_length

    # ------------------------------------------------------------------------------- features

    def featurize(self, spec: TaskSpec, examples: list[dict], tokenizer: Any, max_length: int) -> list[dict]:
        """One feature per window: input_ids (<s> question </s></s> context-window </s> for XLM-R),
        start/end_positions (0 = CLS when the first answer is not wholly inside the window or there is
        none), `offsets` ((start, end) characters for context tokens, None elsewhere) and
        `window_start` (index of the window's first context token in the whole context)."""
        if not examples:
            return []
        questions = self._clip_questions([ex["question"].lstrip() for ex in examples], tokenizer, max_length)
        q_lens = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        # The tokenizer takes the overlap between windows, which depends on the question length; group
        # questions by it so each group is one batched call.
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, q_len in enumerate(q_lens):
            budget = max_length - q_len - specials  # context tokens per window
            if budget < 2:
                raise ValueError(f"{spec.name}: max_length {max_length} leaves no room for the context of "
                                 f"question {examples[i]['id']!r}; raise max_length (384 for QA)")
            # Short max_length (tests, smoke runs): keep windows overlapping by at least half.
            step = min(self.doc_stride, budget // 2)
            groups[(step, budget - step)].append(i)
        features = []
        for (step, overlap), idx in groups.items():
            enc = tokenizer([questions[i] for i in idx], [examples[i]["context"] for i in idx],
                            truncation="only_second", max_length=max_length, stride=overlap,
                            return_overflowing_tokens=True, return_offsets_mapping=True)
            windows_seen: dict[int, int] = defaultdict(int)
            for row, ids in enumerate(enc["input_ids"]):
                i = idx[enc["overflow_to_sample_mapping"][row]]
                seq = enc.sequence_ids(row)
                offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][row], seq)]
                start, end = _positions(examples[i], offsets)
                features.append({"input_ids": ids, "start_positions": start, "end_positions": end,
                                 "offsets": offsets, "window_start": windows_seen[i] * step, "example_index": i})
                windows_seen[i] += 1
        features.sort(key=lambda f: (f["example_index"], f["window_start"]))
        return features

    def _clip_questions(self, questions: list[str], tokenizer: Any, max_length: int) -> list[str]:
        # Half of a short max_length at most, so the context keeps room in tiny configs.
        limit = min(self.max_query_length, max_length // 2)
        enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        return [q[:offs[limit - 1][1]] if len(offs) > limit else q
                for q, offs in zip(questions, enc["offset_mapping"])]

    # ------------------------------------------------------------------------------- model

    def make_head(self, spec: TaskSpec, hidden_size: int) -> nn.Module:
        return nn.Linear(hidden_size, 2)  # start and end logit per token, as RobertaForQuestionAnswering

    def forward(self, head, hidden, pooled, batch):
        logits = head(hidden)  # [B, T, 2]
        mask = batch.get("attention_mask")
        if mask is not None:
            logits = logits.masked_fill(mask.unsqueeze(-1) == 0, _NEG)
        starts, ends = batch.get("start_positions"), batch.get("end_positions")
        if starts is None or ends is None:
            return None, logits
        flat = logits.float()
        loss = (F.cross_entropy(flat[..., 0], starts) + F.cross_entropy(flat[..., 1], ends)) / 2
        return loss, logits

    # ------------------------------------------------------------------------------- predictions

    def predict(self, spec, examples, features, logits):
        """{example id: QAPrediction}; `logits[i]` is [tokens, 2] for `features[i]`."""
        windows: dict[int, list] = defaultdict(list)
        for f, row in zip(features, logits):
            windows[f["example_index"]].append((f, torch.as_tensor(row, dtype=torch.float32)))
        with_null = _SCORERS[spec.scorer][2]
        return {ex["id"]: self._decode(ex["context"], windows[i], with_null) for i, ex in enumerate(examples)}

    def _decode(self, context: str, windows: list, with_null: bool) -> QAPrediction:
        if not windows:
            return QAPrediction("", math.inf)
        spans = [(f["window_start"], sum(o is not None for o in f["offsets"])) for f, _ in windows]
        null = min(float(row[0, 0] + row[0, 1]) for _, row in windows)  # CLS start+end, min over windows
        candidates: list[tuple[float, int, int]] = []
        for w, (f, row) in enumerate(windows):
            offsets = f["offsets"]
            first = next((j for j, o in enumerate(offsets) if o is not None), None)
            if first is None:
                continue
            n = min(self.n_best, len(offsets))
            # Stable sort: ties keep token order, as the reference's sorted() does.
            top_starts = torch.sort(row[:, 0], descending=True, stable=True).indices[:n].tolist()
            top_ends = torch.sort(row[:, 1], descending=True, stable=True).indices[:n].tolist()
            for s in top_starts:
                # A token seen in several windows is only a start where it has the most context around it.
                if offsets[s] is None or not _is_max_context(spans, w, spans[w][0] + s - first):
                    continue
                for e in top_ends:
                    if offsets[e] is None or e < s or e - s + 1 > self.max_answer_length:
                        continue
                    candidates.append((float(row[s, 0] + row[e, 1]), offsets[s][0], offsets[e][1]))
        # The best span with some text: a lone word-boundary token ("▁" / "Ġ") spans only a space or
        # nothing. transformers' processor likewise takes its best non-empty n-best entry for the null
        # comparison, and the slow processor xtreme used maps every sub-token to a whole word, never to "".
        candidates.sort(key=lambda c: c[0], reverse=True)  # stable: ties keep window and token order
        best = next(((score, text) for score, start, end in candidates
                     if (text := answer_text(context, start, end))), None)
        if best is None:
            return QAPrediction("", math.inf)
        diff = null - best[0]
        # transformers' null_score_diff_threshold defaults to 0.0.
        return QAPrediction("" if with_null and diff > 0.0 else best[1], diff)

    # ------------------------------------------------------------------------------- metrics

    def score(self, spec, predictions, examples, lang):
        """SQuAD/MLQA EM and F1 (SQuAD v2: exact, f1, HasAns_*, NoAns_*, best thresholds), plus
        em_f1 = (EM + F1) / 2, jiant's SQuAD selection metric and XTREME's QA average."""
        fn, em_key, with_null = _SCORERS[spec.scorer]
        golds = {ex["id"]: [a["text"] for a in answers_of(ex)] for ex in examples}
        if not with_null:  # test files whose answers were stripped cannot be scored
            golds = {q: texts for q, texts in golds.items() if texts}
        if not golds:
            return {}
        out = fn(predictions, golds, lang)
        out["em_f1"] = (out[em_key] + out["f1"]) / 2
        return out


def _positions(ex: dict, offsets: list) -> tuple[int, int]:
    """Token start/end of the example's first answer in this window, or (0, 0) (CLS)."""
    answers = answers_of(ex)
    ctx = [j for j, o in enumerate(offsets) if o is not None]
    if not answers or not ctx:
        return 0, 0
    char_start = answers[0]["answer_start"]
    char_end = char_start + len(answers[0]["text"])
    if not (offsets[ctx[0]][0] <= char_start and offsets[ctx[-1]][1] >= char_end):
        return 0, 0
    # First token ending after the answer's first character, last token starting before its end: with
    # byte-level BPE one character may span several tokens that share its offsets, and zero-width
    # space tokens never count as inside.
    start = next((j for j in ctx if offsets[j][1] > char_start), 0)
    end = next((j for j in reversed(ctx) if offsets[j][0] < char_end), 0)
    return (start, end) if 0 < start <= end else (0, 0)


def _is_max_context(spans: list[tuple[int, int]], window: int, position: int) -> bool:
    """Whether `window` gives the context token at `position` (in the whole context) the most context:
    score = min(tokens left, tokens right) + 0.01 * window length; ties go to the earlier window."""
    best, best_score = None, -math.inf
    for w, (start, length) in enumerate(spans):
        if start <= position < start + length:
            score = min(position - start, start + length - 1 - position) + 0.01 * length
            if score > best_score:
                best, best_score = w, score
    return best == window


FAMILY = SpanQAFamily()

_FIELDS = {"id": "id", "context": "context", "question": "question", "answers": "answers"}
_SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset"
# jiant's XTREME recipe (facts.md 1.6): lr 1e-5, effective batch 16 (4 x 4 accumulation), 2 epochs, 384
# tokens. The paper's intermediate QA settings are unknown; the same values are used (facts.md 5).
_QA_TRAIN = TrainConfig(epochs=2, lr=1e-5, batch_size=16, max_length=384)
# SQuAD v1.1's download, also read as sentence pairs by the dual-encoder task squad_retrieval.
SQUAD_V1_FILES = FileSource(folder="squad", reader="squad_json", splits={
    "train": "train-v1.1.json", "dev": "dev-v1.1.json"},
    hint=f"download {_SQUAD_URL}/train-v1.1.json and {_SQUAD_URL}/dev-v1.1.json into {{dir}}")

TASKS = [
    TaskSpec(
        name="squad_v1", family="span_qa", phases=("intermediate",), metric="em_f1", scorer="squad_v1",
        description="SQuAD v1.1 extractive QA (also XQuAD's and MLQA's English training data)",
        files=SQUAD_V1_FILES,
        hub=HubSource(path="rajpurkar/squad", fields=_FIELDS, splits={"train": "train", "dev": "validation"}),
        train=_QA_TRAIN,
    ),
    TaskSpec(
        name="squad_v2", family="span_qa", phases=("intermediate",), metric="em_f1", scorer="squad_v2",
        description="SQuAD v2.0: extractive QA with unanswerable questions",
        files=FileSource(folder="squad_v2", reader="squad_json", splits={
            "train": "train-v2.0.json", "dev": "dev-v2.0.json"},
            hint=f"download {_SQUAD_URL}/train-v2.0.json and {_SQUAD_URL}/dev-v2.0.json into {{dir}}"),
        hub=HubSource(path="rajpurkar/squad_v2", fields=_FIELDS, splits={"train": "train", "dev": "validation"}),
        train=_QA_TRAIN,
    ),
    TaskSpec(
        name="xquad", family="span_qa", phases=("xtreme",), metric="em_f1", scorer="squad_v1", group="qa",
        description="XQuAD: trained on SQuAD v1.1, evaluated zero-shot in 11 languages (dev only, as XTREME)",
        languages=XTREME_LANGUAGES["xquad"], train_task="squad_v1",
        files=FileSource(folder="xquad", reader="squad_json", splits={"dev": "xquad.{lang}.json"},
                         hint="download https://raw.githubusercontent.com/deepmind/xquad/master/xquad.{lang}.json "
                              "(one file per language) into {dir}"),
        hub=HubSource(path="google/xtreme", name="XQuAD.{lang}", fields=_FIELDS, splits={"dev": "validation"}),
        train=_QA_TRAIN,
    ),
    TaskSpec(
        name="mlqa", family="span_qa", phases=("xtreme",), metric="em_f1", scorer="mlqa", group="qa",
        description="MLQA (context and question in the same language): trained on SQuAD v1.1, zero-shot in 7",
        languages=XTREME_LANGUAGES["mlqa"], train_task="squad_v1",
        files=FileSource(folder="mlqa", reader="squad_json", splits={
            "dev": "MLQA_V1/dev/dev-context-{lang}-question-{lang}.json",
            "test": "MLQA_V1/test/test-context-{lang}-question-{lang}.json"},
            hint="download https://dl.fbaipublicfiles.com/MLQA/MLQA_V1.zip and unzip it into {dir}"),
        hub=HubSource(path="google/xtreme", name="MLQA.{lang}.{lang}", fields=_FIELDS,
                      splits={"dev": "validation", "test": "test"}),
        train=_QA_TRAIN,
    ),
    TaskSpec(
        name="tydiqa", family="span_qa", phases=("xtreme",), metric="em_f1", scorer="squad_v1", group="qa",
        description="TyDiQA-GoldP: trained on its English train split only (XTREME), zero-shot in 9 languages",
        languages=XTREME_LANGUAGES["tydiqa"],
        # One file holds every language; the reader keeps ids prefixed with the language's name
        # (english-..., arabic-...), so train is the 3,696 English questions, not all 49k (facts.md 2.2).
        files=FileSource(folder="tydiqa", reader="squad_json", splits={
            "train": "tydiqa-goldp-v1.1-train.json", "dev": "tydiqa-goldp-v1.1-dev.json"},
            hint="download https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-train.json and "
                 "https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-dev.json into {dir}"),
        hub=HubSource(path="google/xtreme", name="tydiqa", fields=_FIELDS, id_prefix="{Lang}-",
                      splits={"train": "train", "dev": "validation"}),
        train=_QA_TRAIN,
    ),
    # Machine-translated intermediate data (facts.md 1.5 b): XTREME's translate-train SQuAD v1.1, one file
    # per language; languages from intermediate.task_options.squad_mt.languages ("en" = SQuAD v1.1 itself),
    # selected on English SQuAD dev (train_task). See translated.py.
    TaskSpec(
        name="squad_mt", family="span_qa", phases=("intermediate",), metric="em_f1", scorer="squad_v1",
        description="SQuAD v1.1 train machine-translated (XTREME translate-train); languages from task_options",
        languages=XTREME_LANGUAGES["xquad"], train_task="squad_v1",
        files=FileSource(folder="squad_mt", reader="squad_json", splits={
            "train": "translate-train/squad.translate.train.en-{lang}.json"},
            hint="download https://storage.googleapis.com/xtreme_translations/SQuAD/translate-train/"
                 "squad.translate.train.en-<lang>.json for each language into {dir}/translate-train"),
        train=_QA_TRAIN,
    ),
]


def answer_text(context: str, start: int, end: int) -> str:
    """context[start:end] as an answer. XLM-R's tokenizer composes text (NFKC) before it splits it, so in a
    decomposed context ("e" + U+0301) the last token's offsets stop before the word's trailing combining
    marks: those stay with the word. Surrounding spaces, which some tokenizers' offsets include, go: a
    whitespace-only span would count as answered in SQuAD v2's threshold search."""
    while end < len(context) and unicodedata.category(context[end]).startswith("M"):
        end += 1
    return context[start:end].strip()

