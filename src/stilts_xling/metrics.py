"""Evaluation metrics for the intermediate tasks and the XTREME target tasks.

Every score is on a 0-100 scale. The definitions re-implement (not copy) the
official scripts, whose quirks are kept on purpose so numbers stay comparable:

* SQuAD v1.1 ``evaluate-v1.1.py`` (also xtreme ``third_party/evaluate_squad.py``,
  used for XQuAD and TyDiQA-GoldP): English normalisation for every language.
* SQuAD v2.0 ``evaluate-v2.0.py``: HasAns/NoAns splits, ``find_best_thresh``.
* MLQA ``mlqa_evaluation_v1.py`` (= xtreme ``third_party/evaluate_mlqa.py``):
  language-specific articles, Unicode punctuation, mixed segmentation for zh.
* xtreme ``evaluate.py``: seqeval tagging F1, ``bucc_f1``, language and task
  averaging, group scores and the overall XTREME score.
"""
from __future__ import annotations

import math
import re
import string
import unicodedata
import warnings
from collections import Counter
from typing import Callable, Hashable, Iterable, Mapping, Sequence

from seqeval.metrics import f1_score as _seq_f1
from seqeval.metrics import precision_score as _seq_precision
from seqeval.metrics import recall_score as _seq_recall

# ---------------------------------------------------------------- classification
def accuracy(preds: Sequence, golds: Sequence) -> dict:
    """{"accuracy": 100 * mean(pred == gold)} (xtreme evaluate.py ``accuracy``)."""
    _check_same_length(preds, golds)
    correct = sum(p == g for p, g in zip(preds, golds))
    return {"accuracy": 100.0 * correct / len(golds)}


def accuracy_f1(preds: Sequence, golds: Sequence, positive: Hashable = "1") -> dict:
    """GLUE/QQP style: accuracy, binary F1 of ``positive`` and their mean.

    Labels are compared with ``==`` as given, so preds and golds must use the same
    label type as ``positive`` (e.g. all strings "0"/"1", as jiant's QQP does).
    """
    acc = accuracy(preds, golds)["accuracy"]
    tp = sum(p == positive and g == positive for p, g in zip(preds, golds))
    fp = sum(p == positive and g != positive for p, g in zip(preds, golds))
    fn = sum(p != positive and g == positive for p, g in zip(preds, golds))
    # 2TP / (2TP + FP + FN) equals 2PR/(P+R); sklearn (used by GLUE) returns 0
    # when there is no true positive, including the all-negative case.
    f1 = 100.0 * 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"accuracy": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}


def _check_same_length(preds: Sequence, golds: Sequence) -> None:
    # xtreme asserts equal lengths; zip() alone would silently truncate.
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold labels")
    if not golds:
        raise ValueError("no examples to score")


# ---------------------------------------------------------------- GLUE correlations
def matthews_corr(preds: Sequence, golds: Sequence) -> dict:
    """{"mcc": 100 * Matthews correlation} (GLUE's CoLA metric, sklearn ``matthews_corrcoef``).

    The multiclass form (Gorodkin 2004), which equals the binary (TP*TN - FP*FN) / sqrt(...) for two
    labels: (c*s - sum_k p_k*t_k) / sqrt((s^2 - sum_k p_k^2) * (s^2 - sum_k t_k^2)) with s examples,
    c correct, p_k predicted and t_k gold counts of label k. A zero denominator (one side constant)
    gives 0, as sklearn does.
    """
    _check_same_length(preds, golds)
    s = len(golds)
    c = sum(p == g for p, g in zip(preds, golds))
    p_k, t_k = Counter(preds), Counter(golds)
    cov_pt = c * s - sum(p_k[k] * t_k[k] for k in p_k)
    cov_pp = s * s - sum(n * n for n in p_k.values())
    cov_tt = s * s - sum(n * n for n in t_k.values())
    if cov_pp == 0 or cov_tt == 0:
        return {"mcc": 0.0}
    return {"mcc": 100.0 * cov_pt / math.sqrt(cov_pp * cov_tt)}


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of their positions (scipy ``rankdata``, "average")."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1  # mean of positions start+1 .. end+1
        start = end + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    # scipy returns nan for a constant input; model selection needs a number that never wins, so 0.
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def pearson_spearman(preds: Sequence[float], golds: Sequence[float]) -> dict:
    """STS-B: Pearson and Spearman correlation x100 and their mean ("pearson_spearman"), which is
    GLUE's single STS-B number (and the HF ``glue`` metric's ``combined_score``). Spearman is Pearson
    on average ranks, so ties are handled as scipy ``spearmanr`` handles them."""
    _check_same_length(preds, golds)
    preds, golds = [float(p) for p in preds], [float(g) for g in golds]
    pearson = 100.0 * _pearson(preds, golds)
    spearman = 100.0 * _pearson(average_ranks(preds), average_ranks(golds))
    return {"pearson": pearson, "spearman": spearman, "pearson_spearman": (pearson + spearman) / 2}


# ------------------------------------- answer normalisation (SQuAD v1.1/v2.0, MLQA)
_ASCII_PUNCT = frozenset(string.punctuation)
_EN_ARTICLES = re.compile(r"\b(a|an|the)\b")

# MLQA article patterns, applied after lower-casing and punctuation removal.
_MLQA_ARTICLES: dict[str, re.Pattern | None] = {
    "en": _EN_ARTICLES,
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "hi": None,  # the script: Hindi has no formal articles
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    # Same pattern as the script. Its first alternative can never match ('^'
    # without MULTILINE only matches at position 0, but 3 chars precede it), so
    # in effect EVERY "ال" is replaced by a space, also inside words:
    # "الطالب" -> " ط ب" (two tokens), "قال" -> "ق ". No word boundaries at all.
    "ar": re.compile(r"\sال^|ال"),
    "zh": None,  # the script: Chinese has no formal articles
}
_CJK_CHAR = re.compile(r"[\u4e00-\u9fa5]")  # the script's range, not all of CJK


def _is_mlqa_punct(ch: str) -> bool:
    # The MLQA script precomputes every code point in Unicode category P*, plus
    # string.punctuation (whose $+<=>^`|~ are category S). Testing per char is
    # equivalent and avoids scanning 1.1M code points at import time.
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def mixed_segmentation(text: str) -> list[str]:
    """MLQA zh tokeniser: each CJK char (U+4E00-U+9FA5) or punctuation char is
    a token; the runs between them are whitespace-split."""
    tokens: list[str] = []
    run = ""
    for ch in text:
        if _CJK_CHAR.match(ch) or _is_mlqa_punct(ch):
            tokens.extend(run.split())
            run = ""
            tokens.append(ch)
        else:
            run += ch
    tokens.extend(run.split())
    return tokens


def _squad_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCT)
    return " ".join(_EN_ARTICLES.sub(" ", text).split())


def normalize_answer_mlqa(text: str, lang: str) -> str:
    """MLQA normalisation for an MLQA language (en, es, de, ar, hi, vi, zh)."""
    if lang not in _MLQA_ARTICLES:
        raise ValueError(f"unknown MLQA language {lang!r}; known: {sorted(_MLQA_ARTICLES)}")
    text = "".join(ch for ch in text.lower() if not _is_mlqa_punct(ch))
    pattern = _MLQA_ARTICLES[lang]
    if pattern is not None:
        text = pattern.sub(" ", text)
    # Segmentation comes after punctuation removal, so for zh only the CJK
    # splitting matters: "北京 大学" and "北京大学" both become "北 京 大 学".
    tokens = mixed_segmentation(text) if lang == "zh" else text.split()
    return " ".join(t for t in tokens if t.strip())


def normalize_answer(text: str, lang: str | None = "en") -> str:
    """``"en"``/None: official SQuAD v1.1 (= v2.0) normalisation: lower-case,
    drop ASCII punctuation, drop a/an/the, collapse whitespace. Any other code:
    MLQA rules for that language. MLQA's English differs from SQuAD only in also
    dropping non-ASCII punctuation; use ``normalize_answer_mlqa(t, "en")`` for it.
    """
    if lang in (None, "en"):
        return _squad_normalize(text)
    return normalize_answer_mlqa(text, lang)


def _normalizer(lang: str | None) -> Callable[[str], str]:
    if lang is None:
        return _squad_normalize
    if lang not in _MLQA_ARTICLES:  # fail before scoring, not on the first answer
        raise ValueError(f"unknown MLQA language {lang!r}; known: {sorted(_MLQA_ARTICLES)}")
    return lambda s: normalize_answer_mlqa(s, lang)


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    # v1.1 and MLQA: no overlap -> 0, so empty vs empty scores F1 0 (but EM 1).
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _token_f1_v2(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    # v2.0: if either side is empty (no-answer), F1 is 1 iff both are empty.
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    return _token_f1(pred_tokens, gold_tokens)


# ------------------------------------------------------------------ extractive QA
def squad_scores(
    predictions: Mapping[str, str], golds: Mapping[str, list[str]], lang: str | None = None
) -> dict:
    """SQuAD v1.1 (lang=None; XQuAD, TyDiQA, SQuAD) or MLQA (lang="xx") EM/F1.

    Averaged over ``golds``' ids. As in both official scripts a missing prediction
    scores 0 but still counts in the denominator; predictions for ids not in
    ``golds`` are ignored. Each id takes the max over its gold answers.
    """
    norm = _normalizer(lang)
    if not golds:
        raise ValueError("no gold questions to score")
    em_sum = f1_sum = 0.0
    for qid, answers in golds.items():
        if not answers:  # the official max() over an empty list would crash
            raise ValueError(f"question {qid!r} has no gold answer (use squad_v2_scores)")
        if qid not in predictions:
            continue
        pred = norm(predictions[qid])
        gold_norms = [norm(a) for a in answers]
        em_sum += max(float(pred == g) for g in gold_norms)
        f1_sum += max(_token_f1(pred.split(), g.split()) for g in gold_norms)
    return {"exact_match": 100.0 * em_sum / len(golds), "f1": 100.0 * f1_sum / len(golds)}


def squad_v2_scores(
    predictions: Mapping[str, str],
    golds: Mapping[str, list[str]],
    na_probs: Mapping[str, float] | None = None,
    na_threshold: float = 1.0,
) -> dict:
    """SQuAD v2.0 official metrics; an empty gold list marks an unanswerable id.

    Keys: exact, f1, total, HasAns_{exact,f1,total} and NoAns_{exact,f1,total}
    (each only when such ids exist) and, when ``na_probs`` is given, best_exact,
    best_exact_thresh, best_f1, best_f1_thresh. A prediction whose na_prob is
    > ``na_threshold`` is treated as "no answer". Every gold id needs a prediction
    (use "" for no answer): the official script crashes on a missing one, so there
    is no official number to reproduce and we raise instead.
    """
    if not golds:
        raise ValueError("no gold questions to score")
    missing = [q for q in golds if q not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} ids lack a prediction, e.g. {missing[:3]}")
    probs = dict(na_probs) if na_probs is not None else {q: 0.0 for q in predictions}
    lacking = [q for q in golds if q not in probs]
    if lacking:
        raise ValueError(f"na_probs lacks {len(lacking)} ids, e.g. {lacking[:3]}")
    has_ans = {qid: bool(answers) for qid, answers in golds.items()}

    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for qid, answers in golds.items():
        # Gold answers that normalise to "" are dropped; none left -> [""].
        gold_norms = [g for g in map(_squad_normalize, answers) if g] or [""]
        pred = _squad_normalize(predictions[qid])
        exact_raw[qid] = max(float(pred == g) for g in gold_norms)
        f1_raw[qid] = max(_token_f1_v2(pred.split(), g.split()) for g in gold_norms)

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        # Above the threshold the answer counts as "": right iff unanswerable.
        return {q: float(not has_ans[q]) if probs[q] > na_threshold else s for q, s in raw.items()}

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)
    out = _v2_block(exact, f1, list(golds))
    for prefix, flag in (("HasAns", True), ("NoAns", False)):
        ids = [q for q, h in has_ans.items() if h is flag]
        if ids:
            out.update({f"{prefix}_{k}": v for k, v in _v2_block(exact, f1, ids).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _best_thresh(predictions, exact_raw, probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = _best_thresh(predictions, f1_raw, probs, has_ans)
    return out


def _v2_block(exact: dict, f1: dict, ids: list[str]) -> dict:
    n = len(ids)
    return {"exact": 100.0 * sum(exact[q] for q in ids) / n,
            "f1": 100.0 * sum(f1[q] for q in ids) / n, "total": n}


def _best_thresh(preds, raw: dict, probs: dict, has_ans: dict) -> tuple[float, float]:
    # Official find_best_thresh: start with every question answered "" (all
    # NoAns right), then switch questions to their answer in ascending na_prob
    # order (stable sort, ties in na_probs' order); keep the first strict best.
    # A NoAns question costs 1 only if its raw prediction string is non-empty.
    score = best = float(sum(not h for h in has_ans.values()))
    best_t = 0.0
    for qid in sorted(probs, key=probs.__getitem__):
        if qid not in raw:
            continue
        if has_ans[qid]:
            score += raw[qid]
        elif preds[qid]:
            score -= 1
        if score > best:
            best, best_t = score, probs[qid]
    return 100.0 * best / len(raw), best_t


# ---------------------------------------------------------- tagging and retrieval
def _as_seqeval_0(tags: list[str]) -> list[str]:
    """Tags that seqeval 1.x chunks as seqeval 0.0.x chunked the originals: 0.0.x types a tag without a
    hyphen by the whole tag, 1.x by all but its first letter; "N-NOUN" has prefix "N" and type "NOUN" in
    both. IOB tags ("B-PER") and "O" read the same in both and stay."""
    return [t if t == "O" or "-" in t else f"{t[0]}-{t}" for t in tags]


def tagging_scores(preds: list[list[str]], golds: list[list[str]]) -> dict:
    """seqeval precision/recall/F1 (default, non-strict mode, as xtreme calls it)
    plus token accuracy, all x100.

    For plain UPOS tags seqeval treats the first letter as the chunk prefix
    ("NOUN" -> prefix "N"): runs of equal tags merge into one chunk and SCONJ/SYM
    ("S") are always singletons, so such "POS F1" is not token accuracy. The type
    is the whole tag, as in seqeval 0.0.x, which xtreme's and jiant's 2020 numbers
    were scored with (jiant pins 0.0.12); seqeval 1.x would type "NOUN" as "OUN"
    and merge SCONJ with CCONJ ("CONJ"): see _as_seqeval_0.
    """
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predicted sentences but {len(golds)} gold sentences")
    for i, (p, g) in enumerate(zip(preds, golds)):
        if len(p) != len(g):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags but {len(g)} gold tags")
    n_tokens = sum(len(g) for g in golds)
    if not n_tokens:
        raise ValueError("no tokens to score")
    with warnings.catch_warnings():
        # seqeval warns once per non-IOB tag; POS tags would flood the log.
        warnings.filterwarnings("ignore", message=".*seems not to be NE tag")
        typed = [_as_seqeval_0(g) for g in golds], [_as_seqeval_0(p) for p in preds]
        scores = {"precision": 100.0 * _seq_precision(*typed),
                  "recall": 100.0 * _seq_recall(*typed),
                  "f1": 100.0 * _seq_f1(*typed)}
    correct = sum(pt == gt for p, g in zip(preds, golds) for pt, gt in zip(p, g))
    scores["accuracy"] = 100.0 * correct / n_tokens
    return scores


def bucc_scores(pred_pairs: Iterable, gold_pairs: Iterable) -> dict:
    """Exact set match of (src_id, trg_id) pairs, as xtreme ``bucc_f1``."""
    pred, gold = set(pred_pairs), set(gold_pairs)
    n_correct = len(pred & gold)
    if not n_correct:  # also covers empty sets: everything is 0, as in xtreme
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, r = n_correct / len(pred), n_correct / len(gold)
    return {"precision": 100.0 * p, "recall": 100.0 * r, "f1": 100.0 * 2 * p * r / (p + r)}


# -------------------------------------------------- averaging (xtreme evaluate.py)
# Group names and membership as in evaluate.py GROUP2TASK; "tagging" is the
# paper's "structured prediction" group.
XTREME_GROUPS: dict[str, tuple[str, ...]] = {
    "classification": ("pawsx", "xnli"),
    "tagging": ("udpos", "panx"),
    "qa": ("xquad", "mlqa", "tydiqa"),
    "retrieval": ("bucc2018", "tatoeba"),
}
XTREME_TASKS: tuple[str, ...] = tuple(t for ts in XTREME_GROUPS.values() for t in ts)
# XTREME-R (Ruder et al. 2021, facts.md section 3): PAWS-X and BUCC out; XCOPA, LAReQA and Mewsli-X in. The
# groups follow the paper's table; xtreme's code lists LAReQA in no group, which would leave it out of the
# retrieval average, so it is counted here where the paper puts it.
XTREME_R_GROUPS: dict[str, tuple[str, ...]] = {
    "classification": ("xnli", "xcopa"),
    "tagging": ("udpos", "panx"),
    "qa": ("xquad", "mlqa", "tydiqa"),
    "retrieval": ("tatoeba", "mewslix", "lareqa"),
}
XTREME_R_TASKS: tuple[str, ...] = tuple(t for ts in XTREME_R_GROUPS.values() for t in ts)
BENCHMARK_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {"xtreme": XTREME_GROUPS, "xtreme-r": XTREME_R_GROUPS}
BENCHMARK_TASKS: dict[str, tuple[str, ...]] = {"xtreme": XTREME_TASKS, "xtreme-r": XTREME_R_TASKS}
MAP_K = 20  # LAReQA and Mewsli-X (xtreme: mewslix_map20, LAReQA switched to mAP@20 in e23cf42)
MAP_METRIC = f"map@{MAP_K}"


def _mean_metric(per_lang: Mapping[str, Mapping[str, float]], metric: str) -> float:
    lacking = [lang for lang, scores in per_lang.items() if metric not in scores]
    if lacking:
        raise ValueError(f"metric {metric!r} missing for languages {lacking}")
    return sum(scores[metric] for scores in per_lang.values()) / len(per_lang)


# evaluate.py averages each metric over languages first, then (QA) combines.
_QA_COMBINE: dict[str, Callable[[Mapping], float]] = {
    "em_f1": lambda pl: (_mean_metric(pl, "exact_match") + _mean_metric(pl, "f1")) / 2,
    "f1": lambda pl: _mean_metric(pl, "f1"),
}
_TASK_SCORER: dict[str, Callable[[Mapping, str], float]] = {
    **{t: (lambda pl, _q: _mean_metric(pl, "accuracy")) for t in ("pawsx", "xnli", "tatoeba", "xcopa")},
    **{t: (lambda pl, _q: _mean_metric(pl, MAP_METRIC)) for t in ("mewslix", "lareqa")},
    **{t: (lambda pl, _q: _mean_metric(pl, "f1")) for t in ("udpos", "panx", "bucc2018")},
    **{t: (lambda pl, q: _QA_COMBINE[q](pl)) for t in ("xquad", "mlqa", "tydiqa")},
}


def task_average(
    per_lang: Mapping[str, Mapping[str, float]], task: str, qa_metric: str = "em_f1"
) -> float:
    """Task score = unweighted mean over the given languages (evaluate.py
    ``avg_metric``). QA: (avg EM + avg F1)/2 ("em_f1", evaluate.py's choice) or
    avg F1 ("f1", as papers often report); udpos/panx/bucc2018: avg F1;
    pawsx/xnli/tatoeba/xcopa: avg accuracy; mewslix/lareqa: avg mAP@20. The caller
    picks the languages (evaluate.py uses every language of the task, English included)."""
    if task not in _TASK_SCORER:
        raise ValueError(f"unknown XTREME/XTREME-R task {task!r}; known: {list(_TASK_SCORER)}")
    if qa_metric not in _QA_COMBINE:
        raise ValueError(f"qa_metric must be one of {sorted(_QA_COMBINE)}, got {qa_metric!r}")
    if not per_lang:
        raise ValueError(f"no languages to average for {task}")
    return _TASK_SCORER[task](per_lang, qa_metric)


def group_scores(task_scores: Mapping[str, float], benchmark: str = "xtreme") -> dict[str, float]:
    """Mean task score of every group of `benchmark` whose tasks are all present (evaluate.py)."""
    return {group: sum(task_scores[t] for t in tasks) / len(tasks)
            for group, tasks in BENCHMARK_GROUPS[benchmark].items() if all(t in task_scores for t in tasks)}


def benchmark_score(task_scores: Mapping[str, float], benchmark: str = "xtreme") -> float | None:
    """Unweighted mean of the benchmark's task scores (9 for XTREME, 10 for XTREME-R), or None unless all
    are present (evaluate.py only shows the overall score then). Extra keys are ignored."""
    tasks = BENCHMARK_TASKS[benchmark]
    if not all(t in task_scores for t in tasks):
        return None
    return sum(task_scores[t] for t in tasks) / len(tasks)


def xtreme_score(task_scores: Mapping[str, float]) -> float | None:
    return benchmark_score(task_scores, "xtreme")


def xtreme_r_score(task_scores: Mapping[str, float]) -> float | None:
    return benchmark_score(task_scores, "xtreme-r")
