"""Retrieval maths for BUCC (bitext mining), Tatoeba (nearest-neighbour search) and mAP@k (LAReQA, Mewsli-X).

The definitions follow google-research/xtreme ``third_party/utils_retrieve.py`` (itself a LASER
port) and ``evaluate.py``; where xtreme is ambiguous or crashes, the docstring says what is done
instead. Inputs may be numpy arrays or torch tensors; everything is computed in torch on the
device of the first argument, so CUDA inputs run on the GPU. Similarities are cosine: rows are
L2-normalised inside every function. No function ever holds the full n x m similarity matrix:
``knn`` works on (chunk_size x key_chunk_size) blocks and merges running top-k lists.

Metric convention: precision / recall / F1 / accuracy / recall@k / mAP@k are percentages (0-100), as in
xtreme ``evaluate.py`` (bucc_f1, accuracy) and the rest of this project; a single query's average
precision (``average_precision_at_k``, ``average_precisions``) is a fraction in [0, 1].
"""
from __future__ import annotations

import math
from typing import Any, Hashable, Iterable, NamedTuple, Sequence

import numpy as np
import torch

__all__ = [
    "Candidate", "normalize", "knn", "margin_candidates", "cosine_candidates",
    "best_threshold", "apply_threshold", "prf", "nn_accuracy", "tatoeba_scores", "recall_at_k",
    "average_precision_at_k", "mean_average_precision", "average_precisions", "map_at_k",
]


class Candidate(NamedTuple):
    """One mined pair: source index (or id), target index (or id), score."""
    src: Hashable
    trg: Hashable
    score: float


def _tensor(x: Any, device: torch.device | None = None) -> torch.Tensor:
    # float64 is kept for callers that want it; everything else (fp16, bf16, ints) computes in fp32.
    t = torch.as_tensor(x)
    if t.dtype != torch.float64:
        t = t.float()
    return t.to(device) if device is not None else t


def normalize(x: Any) -> Any:
    """Return ``x`` with every row scaled to unit L2 norm (zero rows stay zero).

    Same type out as in: numpy in gives numpy out, a tensor gives a tensor on its device.
    """
    out = torch.nn.functional.normalize(_tensor(x), p=2.0, dim=-1)
    return out.cpu().numpy() if isinstance(x, np.ndarray) else out


_GROUP = 64  # columns per group in _block_topk


def _block_topk(block: torch.Tensor, k: int):
    """Row-wise top-k of one similarity block, values exact (ties in any order)."""
    a, c = block.shape
    if c % _GROUP or c < 4 * k * _GROUP:
        return block.topk(min(k, c), dim=1)
    # A row's k best entries lie in its k groups (of _GROUP columns) with the largest maxima, so
    # a max over groups plus a topk over k * _GROUP gathered entries replaces a topk over all c
    # columns: about 2x faster on CPU, where topk on wide blocks (not the matmul) dominates.
    _, grp = block.view(a, c // _GROUP, _GROUP).amax(-1).topk(k, dim=1)
    cols = (grp[:, :, None] * _GROUP + torch.arange(_GROUP, device=block.device)).view(a, -1)
    s, j = block.gather(1, cols).topk(k, dim=1)
    return s, cols.gather(1, j)


def _knn_torch(q: torch.Tensor, keys: torch.Tensor, k: int, chunk_size: int, key_chunk_size: int):
    n, m = q.shape[0], keys.shape[0]
    scores = torch.empty((n, k), dtype=q.dtype, device=q.device)
    indices = torch.empty((n, k), dtype=torch.long, device=q.device)
    # One reused block buffer (4096 x 16384 fp32 = 256 MiB by default): writing into fresh
    # allocations of this size costs ~3x the matmul itself on CPU (page faults).
    buf = torch.empty(min(chunk_size, n) * min(key_chunk_size, m), dtype=q.dtype, device=q.device)
    for qs in range(0, n, chunk_size):
        qc = q[qs:qs + chunk_size]
        best_s = best_i = None
        for ks in range(0, m, key_chunk_size):
            kc = keys[ks:ks + key_chunk_size]
            block = buf[:qc.shape[0] * kc.shape[0]].view(qc.shape[0], kc.shape[0])
            torch.mm(qc, kc.T, out=block)
            s, i = _block_topk(block, k)
            i = i + ks
            if best_s is not None:
                # Merge the running top-k with this block's: exact, since a global top-k entry
                # is also in the top-k of its own block.
                s, j = (c := torch.cat([best_s, s], 1)).topk(min(k, c.shape[1]), dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_s, best_i = s, i
        scores[qs:qs + chunk_size], indices[qs:qs + chunk_size] = best_s, best_i
    return scores, indices


def _knn_faiss(q: torch.Tensor, keys: torch.Tensor, k: int, chunk_size: int, key_chunk_size: int):
    import faiss  # optional dependency; flat search is exact and blocks internally

    qn = np.ascontiguousarray(q.cpu().numpy(), dtype=np.float32)
    kn = np.ascontiguousarray(keys.cpu().numpy(), dtype=np.float32)
    index = faiss.IndexFlatIP(kn.shape[1])
    index.add(kn)
    s, i = index.search(qn, k)
    return torch.from_numpy(s).to(q.device), torch.from_numpy(i).long().to(q.device)


_KNN_BACKENDS = {"torch": _knn_torch, "faiss": _knn_faiss}


def knn(queries: Any, keys: Any, k: int, chunk_size: int = 4096, key_chunk_size: int = 16384,
        backend: str = "torch"):
    """Exact cosine k-nearest keys of every query.

    Returns ``(scores, indices)``, both ``[n_queries, min(k, n_keys)]``, sorted by decreasing
    cosine; numpy in (``queries``) gives numpy out, a tensor gives tensors on its device.
    Peak extra memory is about ``chunk_size * key_chunk_size`` similarities (torch backend).
    ``backend="faiss"`` uses ``faiss.IndexFlatIP`` (as xtreme knnCPU) and needs faiss installed.
    Order among exactly tied scores is unspecified.
    """
    if backend not in _KNN_BACKENDS:
        raise ValueError(f"knn backend {backend!r} unknown; use one of {sorted(_KNN_BACKENDS)}")
    if k < 1 or chunk_size < 1 or key_chunk_size < 1:
        raise ValueError(f"k, chunk_size, key_chunk_size must be >= 1 (got {k}, {chunk_size}, {key_chunk_size})")
    q = normalize(_tensor(queries))
    kt = normalize(_tensor(keys, q.device)).to(q.dtype)
    s, i = _KNN_BACKENDS[backend](q, kt, min(k, kt.shape[0]), chunk_size, key_chunk_size)
    if isinstance(queries, np.ndarray):
        return s.cpu().numpy(), i.cpu().numpy()
    return s, i


# xtreme mine_bitext: margin(a, b) with a = cos(x, y), b = (fwd_mean[x] + bwd_mean[y]) / 2.
_MARGINS = {
    "ratio": lambda a, b: a / b,
    "distance": lambda a, b: a - b,
    "absolute": lambda a, b: a,
}


def _label(pairs: list[Candidate], src_ids, trg_ids) -> list[Candidate]:
    if src_ids is None and trg_ids is None:
        return pairs
    sid = (lambda i: i) if src_ids is None else src_ids.__getitem__
    tid = (lambda j: j) if trg_ids is None else trg_ids.__getitem__
    return [Candidate(sid(s), tid(t), c) for s, t, c in pairs]


def margin_candidates(src: Any, trg: Any, k: int = 4, margin: str = "ratio", threshold: float = 0.0,
                      chunk_size: int = 4096, key_chunk_size: int = 16384, backend: str = "torch",
                      src_ids: Sequence | None = None, trg_ids: Sequence | None = None) -> list[Candidate]:
    """BUCC candidate pairs by margin mining: xtreme ``mine_bitext(mode="mine", retrieval="max")``.

    With ``fwd_mean[x]`` = mean cosine of x to its ``min(k, n_trg)`` nearest targets and
    ``bwd_mean[y]`` = mean cosine of y to its ``min(k, n_src)`` nearest sources,
    ``score(x, y) = margin(cos(x, y), (fwd_mean[x] + bwd_mean[y]) / 2)``, margin one of
    ``ratio`` (a / b, the xtreme default), ``distance`` (a - b) or ``absolute`` (a).
    The forward candidate of source x is the target, among x's k nearest, with the highest
    *margin* score (not necessarily the cosine-nearest); likewise backward for each target.
    Both lists are joined (n_src + n_trg entries), sorted by score descending (stable: forward
    entries in source order first on ties; xtreme's np.argsort leaves ties unspecified), and
    walked greedily: a pair is taken when neither its source nor its target was taken before,
    both are then marked used, and the pair is *emitted* only if ``score > threshold``
    (xtreme: default 0, and marking happens before the test, so a dropped pair still blocks).

    Returns ``Candidate(src, trg, score)`` in decreasing score order; src/trg are row indices,
    or ``src_ids[i]`` / ``trg_ids[j]`` when given. xtreme first deduplicates identical sentences
    (text_load_unify); do that before calling.
    """
    if margin not in _MARGINS:
        raise ValueError(f"margin {margin!r} unknown; use one of {sorted(_MARGINS)}")
    margin_fn = _MARGINS[margin]
    x = normalize(_tensor(src))
    y = normalize(_tensor(trg, x.device)).to(x.dtype)
    opts = dict(chunk_size=chunk_size, key_chunk_size=key_chunk_size, backend=backend)
    fwd_sim, fwd_ind = knn(x, y, k, **opts)
    bwd_sim, bwd_ind = knn(y, x, k, **opts)
    fwd_mean, bwd_mean = fwd_sim.mean(1), bwd_sim.mean(1)
    # Only the k candidates per row are scored, so memory stays O((n_src + n_trg) * k).
    fwd_scores = margin_fn(fwd_sim, (fwd_mean[:, None] + bwd_mean[fwd_ind]) / 2)
    bwd_scores = margin_fn(bwd_sim, (bwd_mean[:, None] + fwd_mean[bwd_ind]) / 2)
    fwd_best_score, fwd_col = fwd_scores.max(1)
    bwd_best_score, bwd_col = bwd_scores.max(1)
    fwd_best = fwd_ind.gather(1, fwd_col[:, None])[:, 0]
    bwd_best = bwd_ind.gather(1, bwd_col[:, None])[:, 0]

    arange = lambda n: torch.arange(n, device=x.device)  # noqa: E731
    src_all = torch.cat([arange(x.shape[0]), bwd_best]).cpu().tolist()
    trg_all = torch.cat([fwd_best, arange(y.shape[0])]).cpu().tolist()
    scores = torch.cat([fwd_best_score, bwd_best_score]).cpu()
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    scores = scores.tolist()
    used_src, used_trg, out = set(), set(), []
    for r in order:
        s, t = src_all[r], trg_all[r]
        if s in used_src or t in used_trg:
            continue
        used_src.add(s)
        used_trg.add(t)
        if scores[r] > threshold:
            out.append(Candidate(s, t, scores[r]))
    return _label(out, src_ids, trg_ids)


def cosine_candidates(src: Any, trg: Any, chunk_size: int = 4096, key_chunk_size: int = 16384,
                      backend: str = "torch", src_ids: Sequence | None = None,
                      trg_ids: Sequence | None = None) -> list[Candidate]:
    """Plain cosine protocol: each source's nearest target, no margin, no dedup, no threshold.

    One ``Candidate(src, trg, cos)`` per source row, in source order. Score it with
    ``prf({(c.src, c.trg) for c in cands}, gold)``. (MTEB bitext mining pairs each source with
    its cosine-nearest target the same way but reports sklearn-averaged P/R/F1 over label
    indices; here P/R/F1 are the xtreme set metrics.)
    """
    s, i = knn(_tensor(src), trg, 1, chunk_size=chunk_size, key_chunk_size=key_chunk_size, backend=backend)
    out = [Candidate(r, j, c) for r, (j, c) in enumerate(zip(i[:, 0].tolist(), s[:, 0].tolist()))]
    return _label(out, src_ids, trg_ids)


def _pairs(gold: Iterable) -> set[tuple]:
    # xtreme keeps gold as "src\ttrg" lines; accept those as well as (src, trg) tuples.
    return {tuple(g.split("\t")) if isinstance(g, str) else tuple(g) for g in gold}


def _max_scores(candidates: Iterable) -> dict[tuple, float]:
    # xtreme read_candidate2score keeps the max score of a repeated (src_id, trg_id) pair.
    best: dict[tuple, float] = {}
    for s, t, c in candidates:
        best[(s, t)] = max(float(c), best.get((s, t), -math.inf))
    return best


def prf(pred: Iterable, gold: Iterable) -> tuple[float, float, float]:
    """Set precision, recall, F1 (percentages) of predicted pairs against gold pairs.

    As xtreme ``evaluate.bucc_f1``: P = |pred & gold| / |pred|, R = |pred & gold| / |gold|,
    all three 0 when nothing is correct. Pairs are (src, trg) tuples or "src\\ttrg" strings.
    """
    pred, gold = _pairs(pred), _pairs(gold)
    ncorrect = len(pred & gold)
    if ncorrect == 0:
        return 0.0, 0.0, 0.0
    p, r = ncorrect / len(pred), ncorrect / len(gold)
    return 100 * p, 100 * r, 100 * 2 * p * r / (p + r)


def apply_threshold(candidates: Iterable, threshold: float) -> set[tuple]:
    """Pairs ``(src, trg)`` of the candidates with ``score >= threshold`` (xtreme bucc_extract)."""
    return {pair for pair, c in _max_scores(candidates).items() if c >= threshold}


def best_threshold(candidates: Iterable, gold: Iterable) -> tuple[float, float, float, float]:
    """F1-optimal score threshold on gold pairs: xtreme ``bucc_optimize`` + ``bucc_eval``.

    ``candidates``: (src_id, trg_id, score) triples (a repeated pair keeps its max score);
    ``gold``: (src_id, trg_id) pairs or "src\\ttrg" strings. Candidates are sorted by score
    descending (stable), and the cutoff after item i is scored for every i with at least one
    correct pair so far; the first strictly best F1 wins and the threshold is the midpoint
    ``(score[i] + score[i+1]) / 2``. When the best cutoff is the last item xtreme raises
    IndexError; here the threshold is then ``score[i]`` (keep everything). With no correct
    candidate at all the threshold stays 0, as in xtreme.

    Returns ``(threshold, precision, recall, f1)``, the metrics (percentages) recomputed on
    ``apply_threshold(candidates, threshold)`` as xtreme reports them; with tied scores at the
    cutoff they can differ from the sweep's best F1 because ``>=`` keeps the whole tie.
    """
    best = _max_scores(candidates)
    gold = _pairs(gold)
    items = sorted(best.items(), key=lambda kv: -kv[1])
    threshold, best_f1, ncorrect = 0.0, 0.0, 0
    for n, (pair, score) in enumerate(items, start=1):
        ncorrect += pair in gold
        if ncorrect == 0:
            continue
        p, r = ncorrect / n, ncorrect / len(gold)
        f1 = 2 * p * r / (p + r)
        if f1 > best_f1:
            best_f1 = f1
            threshold = (score + items[n][1]) / 2 if n < len(items) else score
    kept = {pair for pair, c in best.items() if c >= threshold}  # = apply_threshold
    return (threshold, *prf(kept, gold))


def _gold_index(gold: Any, n: int, device: torch.device) -> torch.Tensor:
    g = torch.arange(n) if gold is None else torch.as_tensor(np.asarray(gold)).long()
    if g.shape != (n,):
        raise ValueError(f"gold must hold one index per row ({n}), got shape {tuple(g.shape)}")
    return g.to(device)


def _trg_to_src(src, trg, gold, chunk_size):
    # Query trg, retrieve src: correct when the hit is the gold src of that trg row.
    _, hit = knn(_tensor(trg), src, 1, chunk_size=chunk_size)
    return (hit[:, 0] == _gold_index(gold, hit.shape[0], hit.device)).double().mean().item()


def _src_to_trg(src, trg, gold, chunk_size):
    # Query src i, retrieve trg j: correct when gold maps j back to i (the inverse alignment).
    _, hit = knn(_tensor(src), trg, 1, chunk_size=chunk_size)
    g = _gold_index(gold, _tensor(trg).shape[0], hit.device)
    return (g[hit[:, 0]] == torch.arange(hit.shape[0], device=hit.device)).double().mean().item()


_DIRECTIONS = {"trg->src": _trg_to_src, "src->trg": _src_to_trg,
               # Aliases under xtreme's argument order (run_retrieval: src = xx, trg = English).
               "en->xx": _trg_to_src, "xx->en": _src_to_trg}


def nn_accuracy(src: Any, trg: Any, gold: Any = None, direction: str = "trg->src",
                chunk_size: int = 4096) -> float:
    """Tatoeba nearest-neighbour accuracy (percentage).

    ``gold[j]`` is the index of the ``src`` row aligned with ``trg`` row j (xtreme's Tatoeba
    label file, one line per English sentence); ``None`` means row j <-> row j.
    ``direction="trg->src"`` (default, alias "en->xx") is xtreme: ``similarity_search(x=src,
    y=trg)`` indexes src (non-English) and queries with trg (English), and evaluate.py compares
    each English line's hit with ``gold``. ``"src->trg"`` (alias "xx->en") queries with src and
    counts src i correct when its hit j has ``gold[j] == i``. Meant for 1:1 alignments.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction {direction!r} unknown; use one of {sorted(_DIRECTIONS)}")
    return 100 * _DIRECTIONS[direction](src, trg, gold, chunk_size)


def tatoeba_scores(xx_emb: Any, en_emb: Any, gold: Any = None, chunk_size: int = 4096) -> dict[str, float]:
    """Tatoeba accuracy both ways (percentages).

    ``accuracy_xtreme_dir``: en->xx (English queries, non-English keys; the reported number).
    ``accuracy_reverse``: xx->en. ``accuracy_mean``: their mean. ``gold`` as in nn_accuracy.
    """
    fwd = nn_accuracy(xx_emb, en_emb, gold, "en->xx", chunk_size)
    rev = nn_accuracy(xx_emb, en_emb, gold, "xx->en", chunk_size)
    return {"accuracy_xtreme_dir": fwd, "accuracy_reverse": rev, "accuracy_mean": (fwd + rev) / 2}


def recall_at_k(queries: Any, keys: Any, ks: Sequence[int] = (1, 5, 10), gold: Any = None,
                chunk_size: int = 4096) -> dict[str, float]:
    """``{"recall@k": pct}``: share of queries whose gold key (``gold[i]``, default i) is among
    their k cosine-nearest keys; k larger than the number of keys counts all keys."""
    _, hit = knn(_tensor(queries), keys, max(ks), chunk_size=chunk_size)
    found = hit == _gold_index(gold, hit.shape[0], hit.device)[:, None]
    return {f"recall@{k}": 100 * found[:, :k].any(1).double().mean().item() for k in ks}


def average_precision_at_k(ranked: Sequence[Hashable], relevant: Iterable[Hashable], k: int) -> float:
    """AP@k of one ranked list, as xtreme ``third_party/utils_lareqa.py`` ``average_precision_at_k``.

    Walk the first ``k`` entries of ``ranked``; at each relevant entry not seen earlier in the list
    add precision@i = hits so far / i (i counts every position, repeats included). Divide by
    ``min(len(relevant), k)``. No relevant item gives 0 (xtreme would divide by zero; Mewsli-X's
    MRR@k, which this equals for one relevant item, gives 0 for a query whose gold is not found).
    Returns a fraction in [0, 1].
    """
    relevant = set(relevant)
    if not relevant:
        return 0.0
    seen, hits, total = set(), 0, 0.0
    for i, item in enumerate(ranked[:k], start=1):
        if item in relevant and item not in seen:
            hits += 1
            total += hits / i
        seen.add(item)
    return total / min(len(relevant), k)


def mean_average_precision(rankings: Iterable[tuple[Sequence[Hashable], Iterable[Hashable]]], k: int) -> float:
    """mAP@k (percentage) of (ranked list, relevant items) pairs, one per query, each scored by
    ``average_precision_at_k``; no queries gives 0."""
    aps = [average_precision_at_k(ranked, relevant, k) for ranked, relevant in rankings]
    return 100 * sum(aps) / max(1, len(aps))


def _relevance_codes(relevant: Sequence[Iterable[int]], n_keys: int, device: torch.device) -> torch.Tensor:
    # Each (query, key) relevance pair as the one integer query * n_keys + key, sorted, so a whole
    # [queries, k] block of retrieved keys is checked with one torch.isin instead of python sets.
    codes = [q * n_keys + int(j) for q, keys in enumerate(relevant) for j in set(keys)]
    return torch.tensor(sorted(codes), dtype=torch.long, device=device)


def average_precisions(queries: Any, keys: Any, relevant: Sequence[Iterable[int]], k: int = 20,
                       chunk_size: int = 4096, key_chunk_size: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k retrieval and each query's AP@k (``average_precision_at_k`` on tensors).

    ``relevant[i]`` holds the key indices relevant to query i (any iterable; may be empty).
    Returns ``(top, ap)``: ``top`` [n_queries, min(k, n_keys)] key indices by decreasing cosine and
    ``ap`` [n_queries] float64 fractions, both on the queries' device. The search is ``knn``'s
    chunked top-k, so memory stays at one similarity block whatever the number of keys (Mewsli-X:
    about a million); the hit test is one ``isin`` over the [n_queries, k] ranks.
    """
    q = _tensor(queries)
    if len(relevant) != q.shape[0]:
        raise ValueError(f"relevant has {len(relevant)} entries for {q.shape[0]} queries")
    n_keys = torch.as_tensor(keys).shape[0]
    _, top = knn(q, keys, k, chunk_size=chunk_size, key_chunk_size=key_chunk_size)
    rows = torch.arange(q.shape[0], device=top.device)[:, None]
    hit = torch.isin(rows * n_keys + top, _relevance_codes(relevant, n_keys, top.device)).double()
    # knn never returns a key twice, so every hit is a first occurrence: precision@i = cumsum / i.
    ranks = torch.arange(1, top.shape[1] + 1, device=top.device, dtype=torch.float64)
    total = (hit * hit.cumsum(1) / ranks).sum(1)
    n_rel = torch.tensor([len(set(r)) for r in relevant], device=top.device, dtype=torch.float64)
    ap = torch.where(n_rel > 0, total / n_rel.clamp(min=1, max=k), torch.zeros_like(total))
    return top, ap


def map_at_k(queries: Any, keys: Any, relevant: Sequence[Iterable[int]], k: int = 20,
             chunk_size: int = 4096, key_chunk_size: int = 16384) -> float:
    """mAP@k (percentage): the mean over queries of ``average_precisions``. LAReQA's mAP@20
    (xtreme ``mean_avg_prec_at_k``) and, with one relevant key per query, Mewsli-X's MRR@20."""
    _, ap = average_precisions(queries, keys, relevant, k, chunk_size, key_chunk_size)
    return 100 * ap.mean().item()
