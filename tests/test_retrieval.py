"""Tests for stilts_xling.retrieval. Expected values are worked out by hand in the comments."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from stilts_xling import retrieval as R

approx = lambda v: pytest.approx(v, rel=1e-5, abs=1e-6)  # noqa: E731  (float32 maths)

# Shared 2-D example; all vectors are unit length with 3-4-5 / 7-24-25 coordinates.
SRC = np.array([[1.0, 0.0], [0.0, 1.0], [0.28, 0.96]], dtype=np.float32)  # x0, x1, x2
TRG = np.array([[1.0, 0.0], [0.6, 0.8], [0.28, 0.96]], dtype=np.float32)  # y0, y1, y2
# cos(xi, yj):        y0     y1                          y2
#   x0                1      0.6                         0.28
#   x1                0      0.8                         0.96
#   x2                0.28   .168+.768 = 0.936           .0784+.9216 = 1
# k=2 means.  fwd (rows):  x0 (1+.6)/2 = .8    x1 (.96+.8)/2 = .88   x2 (1+.936)/2 = .968
#             bwd (cols):  y0 (1+.28)/2 = .64  y1 (.936+.8)/2 = .868 y2 (1+.96)/2 = .98


def test_normalize_rows_keeps_type_and_zero_rows():
    out = R.normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)  # 3/5, 4/5
    assert isinstance(R.normalize(torch.ones(2, 2)), torch.Tensor)


def test_knn_hand_example_and_k_clipped():
    # Query (2, 0) normalises to (1, 0): cos to the keys = 1, .6, .28 -> top-2 = y0 (1), y1 (.6).
    s, i = R.knn(np.array([[2.0, 0.0]], dtype=np.float32), TRG, k=2)
    assert isinstance(s, np.ndarray)
    np.testing.assert_allclose(s, [[1.0, 0.6]], rtol=1e-6)
    assert i.tolist() == [[0, 1]]
    s, i = R.knn(torch.tensor([[2.0, 0.0]]), torch.from_numpy(TRG), k=10, chunk_size=1, key_chunk_size=1)
    assert isinstance(s, torch.Tensor) and i.tolist() == [[0, 1, 2]]  # k clipped to 3 keys


@pytest.mark.parametrize("chunk_size,key_chunk_size", [(1, 1), (7, 3), (50, 64), (103, 257), (4096, 16384)])
def test_knn_chunked_equals_brute_force(chunk_size, key_chunk_size):
    g = torch.Generator().manual_seed(0)
    q, keys = torch.randn(103, 8, generator=g), torch.randn(257, 8, generator=g)
    full = R.normalize(q) @ R.normalize(keys).T
    ref_s, ref_i = full.topk(5, dim=1)
    s, i = R.knn(q, keys, 5, chunk_size=chunk_size, key_chunk_size=key_chunk_size)
    torch.testing.assert_close(s, ref_s)
    assert torch.equal(i, ref_i)


def test_knn_grouped_block_path_equals_brute_force():
    # key_chunk_size 2048 >= 4 * k * 64 and divisible by 64 takes the group-max path for the
    # first two key blocks; the last block (5000 - 4096 = 904 keys) takes the plain topk.
    g = torch.Generator().manual_seed(1)
    q, keys = torch.randn(300, 16, generator=g), torch.randn(5000, 16, generator=g)
    ref_s, ref_i = (R.normalize(q) @ R.normalize(keys).T).topk(4, dim=1)
    s, i = R.knn(q, keys, 4, chunk_size=128, key_chunk_size=2048)
    torch.testing.assert_close(s, ref_s)
    assert torch.equal(i, ref_i)


def test_knn_faiss_backend_matches_torch():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(2)
    q, keys = torch.randn(50, 8, generator=g), torch.randn(80, 8, generator=g)
    s1, i1 = R.knn(q, keys, 3)
    s2, i2 = R.knn(q, keys, 3, backend="faiss")
    torch.testing.assert_close(s1, s2)
    assert torch.equal(i1, i2)


def test_bad_options_raise_value_error():
    with pytest.raises(ValueError, match="backend"):
        R.knn(SRC, TRG, 1, backend="annoy")
    with pytest.raises(ValueError, match="margin"):
        R.margin_candidates(SRC, TRG, margin="cosh")
    with pytest.raises(ValueError, match="direction"):
        R.nn_accuracy(SRC, TRG, direction="up")


def test_margin_candidates_ratio_by_hand():
    # ratio score(x, y) = cos / ((fwd[x] + bwd[y]) / 2), over each row's 2 nearest:
    #   x0: y0 1/((.8+.64)/2) = 1/.72 = 1.38889      y1 .6/((.8+.868)/2) = .6/.834 = .71942  -> y0
    #   x1: y2 .96/((.88+.98)/2) = .96/.93 = 1.03226 y1 .8/((.88+.868)/2) = .8/.874 = .91533 -> y2
    #   x2: y2 1/((.968+.98)/2) = 1/.974 = 1.02669   y1 .936/((.968+.868)/2) = .936/.918 = 1.01961 -> y2
    #   y0: x0 1.38889   x2 .28/((.64+.968)/2) = .28/.804 = .34826                               -> x0
    #   y1: x2 .936/.918 = 1.01961   x1 .8/.874 = .91533                                        -> x2
    #   y2: x2 1/.974 = 1.02669      x1 .96/.93 = 1.03226   (margin-best x1 is not the cos-best x2) -> x1
    # Union sorted: (0,0) 1.389 twice, (1,2) 1.032 twice, (2,2) 1.0267, (2,1) 1.0196.
    # Greedy: keep (0,0); keep (1,2); (2,2) blocked, y2 is used; keep (2,1).
    got = R.margin_candidates(SRC, TRG, k=2)
    assert [(c.src, c.trg) for c in got] == [(0, 0), (1, 2), (2, 1)]
    assert [c.score for c in got] == [approx(1 / 0.72), approx(0.96 / 0.93), approx(0.936 / 0.918)]
    # The plain cosine protocol instead pairs each source with its cos-nearest target, no dedup.
    cos = R.cosine_candidates(SRC, TRG)
    assert [(c.src, c.trg) for c in cos] == [(0, 0), (1, 2), (2, 2)]
    assert [c.score for c in cos] == [approx(1.0), approx(0.96), approx(1.0)]


def test_margin_candidates_distance_threshold_and_ids():
    # distance score = cos - avg:  x0->y0 1-.72 = .28, x1->y2 .96-.93 = .03, x2->y2 1-.974 = .026,
    # y0->x0 .28, y1->x2 .936-.918 = .018, y2->x1 .03 (beats x2's .026). Same greedy walk as the
    # ratio case: (0,0) .28, (1,2) .03, (2,2) blocked, (2,1) .018, dropped by threshold .02.
    got = R.margin_candidates(SRC, TRG, k=2, margin="distance", threshold=0.02,
                              src_ids=["de-1", "de-2", "de-3"], trg_ids=["en-1", "en-2", "en-3"])
    assert [(c.src, c.trg) for c in got] == [("de-1", "en-1"), ("de-2", "en-3")]
    assert [c.score for c in got] == [approx(0.28), approx(0.03)]


def test_margin_candidates_drops_scores_not_above_zero():
    # k=1 distance margin: x0=(1,0)->y0=(1,0): 1 - (1+1)/2 = 0; x1=(0,1)->y1=(.6,.8): .8 - (.8+.8)/2 = 0.
    # xtreme keeps a pair only if score > 0, so nothing is mined; a lower threshold keeps both.
    src = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    trg = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    assert R.margin_candidates(src, trg, k=1, margin="distance") == []
    got = R.margin_candidates(src, trg, k=1, margin="distance", threshold=-0.5)
    assert [(c.src, c.trg, c.score) for c in got] == [(0, 0, 0.0), (1, 1, 0.0)]


def _margin_reference(x, y, k):
    """Brute-force mine_bitext(mode=mine, retrieval=max, margin=ratio) on the full matrix."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    sim = x @ y.T
    fwd_mean = np.sort(sim, axis=1)[:, -k:].mean(1)
    bwd_mean = np.sort(sim, axis=0)[-k:, :].mean(0)
    fwd_nn, bwd_nn = np.argsort(-sim, axis=1)[:, :k], np.argsort(-sim.T, axis=1)[:, :k]
    rows = []
    for i in range(len(x)):
        rows.append(max((sim[i, j] / ((fwd_mean[i] + bwd_mean[j]) / 2), i, j) for j in fwd_nn[i]))
    for j in range(len(y)):
        rows.append(max((sim[i, j] / ((fwd_mean[i] + bwd_mean[j]) / 2), i, j) for i in bwd_nn[j]))
    used_s, used_t, out = set(), set(), []
    for score, i, j in sorted(rows, key=lambda r: -r[0]):
        if i not in used_s and j not in used_t:
            used_s.add(i)
            used_t.add(j)
            if score > 0:
                out.append((i, j, score))
    return out


@pytest.mark.parametrize("chunk_size,key_chunk_size", [(7, 5), (64, 33), (1000, 1000)])
def test_margin_candidates_chunked_equals_reference(chunk_size, key_chunk_size):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((300, 6)), rng.standard_normal((250, 6))  # float64 end to end
    ref = _margin_reference(x, y, 4)
    got = R.margin_candidates(x, y, k=4, chunk_size=chunk_size, key_chunk_size=key_chunk_size)
    assert [(c.src, c.trg) for c in got] == [(i, j) for i, j, _ in ref]
    np.testing.assert_allclose([c.score for c in got], [s for _, _, s in ref], rtol=1e-10)


# Candidates for best_threshold: (src, trg, score); gold has 5 pairs, one never retrieved.
CANDS = [("a", "A", 0.9), ("b", "X", 0.8), ("c", "C", 0.7), ("d", "D", 0.6),
         ("e", "X2", 0.5), ("f", "F", 0.4), ("g", "X3", 0.3)]
GOLD = {("a", "A"), ("c", "C"), ("d", "D"), ("f", "F"), ("z", "Z")}


def test_best_threshold_sweep_and_midpoint():
    # Cutoff after n items (ngold = 5):      n  correct   P     R     F1
    #   a .9 ok                               1     1     1    .2    .4/1.2   = .3333
    #   b .8 wrong                            2     1    .5    .2    .2/.7    = .2857
    #   c .7 ok                               3     2   .667   .4    .5333/1.0667 = .5
    #   d .6 ok                               4     3   .75    .6    .9/1.35  = .6667
    #   e .5 wrong                            5     3   .6     .6    .6
    #   f .4 ok                               6     4   .667   .8    1.0667/1.4667 = .72727  <- best
    #   g .3 wrong                            7     4   .571   .8    .6667
    # threshold = (.4 + .3) / 2 = .35; keeping score >= .35 gives a..f: P 4/6, R 4/5, F1 8/11.
    th, p, r, f1 = R.best_threshold(CANDS, GOLD)
    assert th == pytest.approx(0.35)
    assert (p, r, f1) == (pytest.approx(200 / 3), pytest.approx(80.0), pytest.approx(800 / 11))


def test_best_threshold_at_end_of_list_and_gold_strings():
    # Without g the best cutoff is the last item: xtreme raises IndexError; we keep everything
    # (threshold = .4). Gold given as xtreme's "src\ttrg" lines.
    th, p, r, f1 = R.best_threshold(CANDS[:-1], {f"{s}\t{t}" for s, t in GOLD})
    assert th == pytest.approx(0.4)
    assert (p, r, f1) == (pytest.approx(200 / 3), pytest.approx(80.0), pytest.approx(800 / 11))


def test_best_threshold_tie_and_duplicates_and_no_hit():
    # Sweep a .9 (F1 2/3), b .5 (P 1, R 1, F1 1 -> best), threshold (.5 + .5)/2 = .5; keeping
    # score >= .5 also keeps the tied wrong c: P 2/3, R 1, F1 .8 (what xtreme reports too).
    # ("a", "A") appears twice; the max score .9 counts, as xtreme read_candidate2score.
    cands = [("a", "A", 0.2), ("a", "A", 0.9), ("b", "B", 0.5), ("c", "C", 0.5)]
    th, p, r, f1 = R.best_threshold(cands, {("a", "A"), ("b", "B")})
    assert (th, p, r, f1) == (pytest.approx(0.5), pytest.approx(200 / 3), pytest.approx(100.0), pytest.approx(80.0))
    # Equal F1 at two cutoffs (F1 = 2 * correct / (n + ngold), ngold 2): after a (.9, ok)
    # 2/3; b, c wrong; after d (.6, ok) 4/6 = 2/3 again. The first one wins (strict >):
    # threshold (.9 + .8)/2 = .85 keeps {a}: P 100, R 50, F1 2/3.
    cands = [("a", "A", 0.9), ("b", "X", 0.8), ("c", "Y", 0.7), ("d", "D", 0.6), ("e", "Z", 0.5)]
    th, p, r, f1 = R.best_threshold(cands, {("a", "A"), ("d", "D")})
    assert (th, p, r, f1) == (pytest.approx(0.85), 100.0, 50.0, pytest.approx(200 / 3))
    # No correct candidate: threshold stays 0, all metrics 0.
    assert R.best_threshold([("a", "B", 0.7)], {("a", "A")}) == (0.0, 0.0, 0.0, 0.0)


def test_apply_threshold_is_inclusive_and_prf():
    assert R.apply_threshold(CANDS, 0.7) == {("a", "A"), ("b", "X"), ("c", "C")}
    # pred {a, b, x}, gold {a, b, c, d}: 2 correct -> P 2/3, R 1/2, F1 2PR/(P+R) = (2/3)/(7/6) = 4/7.
    p, r, f1 = R.prf({(1, 1), (2, 2), (9, 9)}, {(1, 1), (2, 2), (3, 3), (4, 4)})
    assert (p, r, f1) == (pytest.approx(200 / 3), pytest.approx(50.0), pytest.approx(400 / 7))
    assert R.prf({(9, 9)}, {(1, 1)}) == (0.0, 0.0, 0.0)


# Tatoeba example. cos(xx_i, en_j):   en0=(.8,.6)  en1=(.28,.96)  en2=(0,1)
#   xx0=(1,0)                          .8           .28            0
#   xx1=(.6,.8)                        .96          .936           .8
#   xx2=(0,1)                          .6           .96            1
XX = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
EN = np.array([[0.8, 0.6], [0.28, 0.96], [0.0, 1.0]], dtype=np.float32)


def test_nn_accuracy_directions_differ():
    # en->xx (xtreme; column argmax): en0 -> xx1 wrong, en1 -> xx2 wrong, en2 -> xx2 ok = 1/3.
    # xx->en (row argmax):            xx0 -> en0 ok, xx1 -> en0 wrong, xx2 -> en2 ok = 2/3.
    assert R.nn_accuracy(XX, EN) == pytest.approx(100 / 3)
    assert R.nn_accuracy(XX, EN, direction="en->xx") == pytest.approx(100 / 3)
    assert R.nn_accuracy(XX, EN, direction="src->trg") == pytest.approx(200 / 3)
    assert R.tatoeba_scores(XX, EN) == {"accuracy_xtreme_dir": pytest.approx(100 / 3),
                                        "accuracy_reverse": pytest.approx(200 / 3),
                                        "accuracy_mean": pytest.approx(50.0)}


def test_nn_accuracy_with_shuffled_english_and_gold():
    # xtreme sorts the English side; gold[j] = xx index aligned with English line j.
    # English order [en2, en0, en1] -> gold [2, 0, 1]; both accuracies are unchanged.
    en = EN[[2, 0, 1]]
    scores = R.tatoeba_scores(torch.from_numpy(XX), torch.from_numpy(en), gold=[2, 0, 1])
    assert scores["accuracy_xtreme_dir"] == pytest.approx(100 / 3)
    assert scores["accuracy_reverse"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="gold"):
        R.nn_accuracy(XX, en, gold=[0, 1])


def test_recall_at_k():
    # English queries, xx keys. Ranking of xx per query (cos):
    #   en0: xx1 .96, xx0 .8, xx2 .6   gold xx0 at rank 2
    #   en1: xx2 .96, xx1 .936, xx0 .28 gold xx1 at rank 2
    #   en2: xx2 1, xx1 .8, xx0 0       gold xx2 at rank 1
    # recall@1 = 1/3, recall@2 = 3/3; k=5 > 3 keys counts all keys.
    got = R.recall_at_k(EN, XX, ks=(1, 2, 5))
    assert got == {"recall@1": pytest.approx(100 / 3), "recall@2": 100.0, "recall@5": 100.0}
    # gold reversed: en0 -> xx2 (rank 3), en1 -> xx1 (rank 2), en2 -> xx0 (rank 3).
    got = R.recall_at_k(EN, XX, ks=(1, 2, 3), gold=[2, 1, 0])
    assert got == {"recall@1": 0.0, "recall@2": pytest.approx(100 / 3), "recall@3": 100.0}


MINE_100K = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from stilts_xling.retrieval import margin_candidates
    n, d, planted = 100_000, 16, 1000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = rng.standard_normal((n, d), dtype=np.float32)
    src_rows, trg_rows = rng.permutation(n)[:planted], rng.permutation(n)[:planted]
    y[trg_rows] = x[src_rows] + 0.01 * rng.standard_normal((planted, d), dtype=np.float32)
    t = time.perf_counter()
    cands = margin_candidates(x, y, k=4)
    seconds = time.perf_counter() - t
    mined = {(c.src, c.trg) for c in cands}
    found = sum((int(s), int(t)) in mined for s, t in zip(src_rows, trg_rows))
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "n_candidates": len(cands), "planted_found": found}))
""")


def test_mining_100k_by_100k_in_bounded_memory():
    # A full 100k x 100k float32 similarity matrix is 4e10 bytes = 40 GB. The whole process
    # (python + torch + data + one 256 MiB block buffer) must peak under 2 GB, and the planted
    # near-duplicate pairs must be mined. Runs in a subprocess so the peak RSS is its own.
    src_dir = Path(R.__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", MINE_100K], capture_output=True, text=True,
                          env={"PYTHONPATH": str(src_dir), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    print(stats)
    assert stats["peak_rss_bytes"] < 2 * 1024**3
    assert stats["planted_found"] >= 990
    assert stats["n_candidates"] <= 100_000


# ------------------------------------------------------------------------------- mAP@k (LAReQA, Mewsli-X)

@pytest.mark.parametrize("ranked,relevant,k,expected", [
    # hits at ranks 2 and 4: (1/2 + 2/4) / min(2, 4)
    (["a", "b", "c", "d"], {"b", "d"}, 4, 0.5),
    # a repeat is no second hit but still takes a rank: b at 1 (1/1), c at 4 (2/4); (1 + .5) / 2
    (["b", "b", "a", "c"], {"b", "c"}, 4, 0.75),
    # fewer relevant than k: one relevant at rank 2, divided by min(1, 20) = 1
    (["y", "x"], {"x"}, 20, 0.5),
    # more relevant than k: only the first 2 ranks count, a at 1 -> 1/1, divided by min(4, 2) = 2
    (["a", "e", "b"], {"a", "b", "c", "d"}, 2, 0.5),
    (["e", "f", "a"], {"a"}, 2, 0.0),  # the hit lies beyond k
    (["e", "f"], {"a"}, 20, 0.0),  # no hit
    (["a"], set(), 20, 0.0),  # nothing relevant: 0 (xtreme would divide by zero)
    (["b", "a", "c"], {"a", "b", "c"}, 3, 1.0),  # every rank a hit
])
def test_average_precision_at_k_hand_cases(ranked, relevant, k, expected):
    assert R.average_precision_at_k(ranked, relevant, k) == pytest.approx(expected)


# Keys on the unit circle: k0 (1, 0), k1 (.6, .8), k2 (0, 1), k3 (-1, 0).
AP_KEYS = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
# q0 (1, 0):      cos 1, .6, 0, -1        -> ranks k0 k1 k2 k3
# q1 (.28, .96):  cos .28, .936, .96, -.28 -> ranks k2 k1 k0 k3
AP_QUERIES = torch.tensor([[2.0, 0.0], [0.28, 0.96], [0.0, 1.0]])
AP_RELEVANT = [[1, 2], [3], []]


def test_average_precisions_hand_example():
    top, ap = R.average_precisions(AP_QUERIES, AP_KEYS, AP_RELEVANT, k=4)
    assert top[:2].tolist() == [[0, 1, 2, 3], [2, 1, 0, 3]]
    # q0: k1 at rank 2 (1/2), k2 at rank 3 (2/3) -> (1/2 + 2/3) / 2; q1: k3 at rank 4 -> 1/4; q2: none -> 0
    assert ap.tolist() == pytest.approx([(1 / 2 + 2 / 3) / 2, 1 / 4, 0.0])
    assert R.map_at_k(AP_QUERIES, AP_KEYS, AP_RELEVANT, k=4) == pytest.approx(100 * (7 / 12 + 1 / 4) / 3)
    # k = 2: q0 keeps only k1 (1/2) over min(2, 2); q1's k3 falls outside
    _, ap = R.average_precisions(AP_QUERIES, AP_KEYS, AP_RELEVANT, k=2)
    assert ap.tolist() == pytest.approx([0.25, 0.0, 0.0])


def test_average_precisions_agrees_with_the_reference_and_chunks():
    g = torch.Generator().manual_seed(3)
    q, keys = torch.randn(37, 8, generator=g), torch.randn(300, 8, generator=g)
    relevant = [torch.randint(0, 300, (int(n),), generator=g).tolist() for n in torch.randint(0, 30, (37,), generator=g)]
    top, ap = R.average_precisions(q, keys, relevant, k=20)
    ranked = (R.normalize(q) @ R.normalize(keys).T).argsort(dim=1, descending=True)
    for i in range(37):
        assert top[i].tolist() == ranked[i, :20].tolist()
        assert ap[i].item() == pytest.approx(R.average_precision_at_k(ranked[i].tolist(), relevant[i], 20))
    _, small = R.average_precisions(q, keys, relevant, k=20, chunk_size=5, key_chunk_size=7)
    torch.testing.assert_close(small, ap)
    with pytest.raises(ValueError, match="relevant has 2 entries for 37 queries"):
        R.average_precisions(q, keys, relevant[:2])
