"""Tests for stilts_xling.metrics. Expected values are computed by hand; the
arithmetic is in the comments."""
import warnings

import pytest

from stilts_xling.metrics import (
    accuracy,
    accuracy_f1,
    bucc_scores,
    group_scores,
    mixed_segmentation,
    normalize_answer,
    normalize_answer_mlqa,
    squad_scores,
    squad_v2_scores,
    tagging_scores,
    task_average,
    xtreme_score,
)

approx = pytest.approx


# ----------------------------------------------------------------- classification
def test_accuracy():
    # matches at positions 0, 1, 3 -> 3/5 = 60
    assert accuracy([0, 1, 1, 0, 2], [0, 1, 0, 0, 1]) == {"accuracy": approx(60.0)}


def test_accuracy_length_mismatch_and_empty():
    with pytest.raises(ValueError):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError):
        accuracy([], [])


GOLD7 = ["1", "1", "0", "0", "1", "0", "0"]
PRED7 = ["1", "0", "1", "0", "1", "0", "0"]


def test_accuracy_f1_positive_class():
    # correct: idx 0,3,4,5,6 -> 5/7 = 71.428571
    # positive "1": TP = idx0, idx4 = 2; FP = idx2 = 1; FN = idx1 = 1
    # F1 = 2*2 / (2*2 + 1 + 1) = 4/6 = 66.666667; mean = (500/7 + 200/3)/2 = 2900/42
    out = accuracy_f1(PRED7, GOLD7)
    assert out["accuracy"] == approx(500 / 7)
    assert out["f1"] == approx(200 / 3)
    assert out["acc_and_f1"] == approx(2900 / 42)


def test_accuracy_f1_other_positive_and_no_positives():
    # positive "0": TP = idx 3,5,6 = 3; FP (pred 0, gold 1) = idx1; FN = idx2 -> 6/8 = 75
    assert accuracy_f1(PRED7, GOLD7, positive="0")["f1"] == approx(75.0)
    # no positive anywhere: TP = 0 -> F1 0 (sklearn convention); acc 100; mean 50
    out = accuracy_f1(["0", "0"], ["0", "0"])
    assert (out["accuracy"], out["f1"], out["acc_and_f1"]) == (100.0, 0.0, 50.0)


# ---------------------------------------------------------- SQuAD v1.1 normalisation
def test_squad_normalize_articles_punctuation():
    # lower -> drop ASCII punct ("'" "," "!") -> drop a/an/the -> squeeze spaces
    assert normalize_answer("The  Cat's hat, an apple!") == "cats hat apple"
    # \b word boundaries: "theatre" and "another" are not articles
    assert normalize_answer("the theatre another") == "theatre another"
    # SQuAD drops only ASCII punctuation: guillemets stay, "«" is a boundary
    # for \bthe\b, so "the" still goes: "«the cat»" -> "« cat»"
    assert normalize_answer("«the cat»", "en") == "« cat»"
    assert normalize_answer("«the cat»", None) == "« cat»"


def test_squad_scores_multiple_golds_missing_and_articles():
    golds = {
        "q1": ["The Eiffel Tower", "Eiffel Tower in Paris"],
        "q2": ["Denver", "Denver Broncos"],
        "q3": ["1990"],
        "q4": ["a cat"],
    }
    preds = {
        "q1": "the eiffel tower!",  # -> "eiffel tower" == gold 1: EM 1, F1 1
        "q2": "Broncos of Denver",  # 3 tokens
        # q3 missing -> 0 but still counted in the denominator (4)
        "q4": "the cat sat",  # "cat sat" vs "cat"
        "extra": "ignored",  # ids not in golds are ignored
    }
    # q2: vs "denver": common 1, P=1/3, R=1 -> F1 = (2/3)/(4/3) = 0.5
    #     vs "denver broncos": common 2, P=2/3, R=1 -> F1 = (4/3)/(5/3) = 0.8; max 0.8
    # q4: common 1, P=1/2, R=1 -> F1 = 1/(3/2) = 2/3; EM 0
    # EM = 1/4 = 25; F1 = (1 + 0.8 + 0 + 2/3)/4 = 0.616667
    out = squad_scores(preds, golds)
    assert out == {"exact_match": approx(25.0), "f1": approx(100 * (1 + 0.8 + 2 / 3) / 4)}


def test_squad_v1_empty_after_normalisation():
    # "the" and "a" both normalise to "": EM 1, but v1.1 F1 has no common
    # token -> 0 (v2.0 would give 1, see test_squad_v2_gold_normalising_to_empty)
    assert squad_scores({"q": "the"}, {"q": ["a"]}) == {"exact_match": 100.0, "f1": 0.0}


def test_squad_scores_errors():
    with pytest.raises(ValueError):
        squad_scores({"q": "x"}, {"q": []})  # no gold answer
    with pytest.raises(ValueError):
        squad_scores({}, {})
    with pytest.raises(ValueError):
        squad_scores({"q": "x"}, {"q": ["x"]}, lang="fr")  # not an MLQA language


# ------------------------------------------------------------------------ SQuAD v2.0
V2_GOLDS = {"h1": ["Paris"], "h2": ["blue whale"], "n1": [], "n2": []}
V2_PREDS = {"h1": "Paris", "h2": "whale", "n1": "", "n2": "London"}
V2_PROBS = {"h1": 0.1, "h2": 0.6, "n1": 0.3, "n2": 0.8}
# raw exact: h1 1, h2 0, n1 1 ("" == ""), n2 0
# raw F1:    h1 1, h2 [whale] vs [blue, whale]: P=1, R=1/2 -> 2/3, n1 1 (both empty), n2 0


def test_squad_v2_has_ans_no_ans():
    out = squad_v2_scores(V2_PREDS, V2_GOLDS)
    assert out["exact"] == approx(50.0)  # (1+0+1+0)/4
    assert out["f1"] == approx(100 * (1 + 2 / 3 + 1 + 0) / 4)  # 66.67
    assert out["total"] == 4
    assert out["HasAns_exact"] == approx(50.0)  # (1+0)/2
    assert out["HasAns_f1"] == approx(100 * (1 + 2 / 3) / 2)  # 83.33
    assert out["HasAns_total"] == 2
    assert out["NoAns_exact"] == approx(50.0)  # (1+0)/2
    assert out["NoAns_f1"] == approx(50.0)
    assert out["NoAns_total"] == 2
    assert "best_f1" not in out  # only with na_probs


def test_squad_v2_best_threshold():
    out = squad_v2_scores(V2_PREDS, V2_GOLDS, na_probs=V2_PROBS)
    # default na_threshold 1.0: no prob exceeds it -> same as without na_probs
    assert out["exact"] == approx(50.0)
    # find_best_thresh: start with all answered "" -> score = #NoAns = 2.
    # ascending na_prob: h1 .1, n1 .3, h2 .6, n2 .8
    # exact: h1 +1 -> 3 (best, t=.1); n1 pred "" -> 0; h2 +0; n2 pred "London" -> -1 -> 2
    assert out["best_exact"] == approx(75.0)  # 3/4
    assert out["best_exact_thresh"] == approx(0.1)
    # f1: h1 +1 -> 3 (t=.1); n1 0 -> 3; h2 +2/3 -> 3.667 (best, t=.6); n2 -1
    assert out["best_f1"] == approx(100 * (3 + 2 / 3) / 4)  # 91.67
    assert out["best_f1_thresh"] == approx(0.6)


def test_squad_v2_na_threshold_applied():
    # threshold .5: h2 (.6) and n2 (.8) become "no answer" -> right iff NoAns
    # exact: h1 1, h2 0, n1 1, n2 1 -> 75; F1: h1 1, h2 0, n1 1, n2 1 -> 75
    out = squad_v2_scores(V2_PREDS, V2_GOLDS, na_probs=V2_PROBS, na_threshold=0.5)
    assert out["exact"] == approx(75.0)
    assert out["f1"] == approx(75.0)
    assert out["HasAns_f1"] == approx(50.0)
    assert out["NoAns_exact"] == approx(100.0)


def test_squad_v2_gold_normalising_to_empty():
    # gold "the" normalises to "" and is dropped -> gold [""]; the id still
    # counts as HasAns (its answer list is not empty). "" vs "": EM 1, F1 1.
    out = squad_v2_scores({"q": ""}, {"q": ["the"]})
    assert (out["exact"], out["f1"], out["HasAns_total"]) == (100.0, 100.0, 1)
    assert "NoAns_total" not in out
    # dropping matters when another gold survives: ["the", "cat"] -> ["cat"],
    # so an empty prediction scores EM 0, F1 0 (not a match against "the")
    out = squad_v2_scores({"q": ""}, {"q": ["the", "cat"]})
    assert (out["exact"], out["f1"]) == (0.0, 0.0)


def test_squad_v2_missing_prediction_raises():
    # the official v2.0 script crashes (KeyError) on a missing id
    with pytest.raises(ValueError):
        squad_v2_scores({"h1": "Paris"}, V2_GOLDS)
    with pytest.raises(ValueError):
        squad_v2_scores(V2_PREDS, V2_GOLDS, na_probs={"h1": 0.1})


# ---------------------------------------------------------------------------- MLQA
def test_mlqa_english_unicode_punct():
    # MLQA en drops every Unicode P* char: "«the cat»" -> "the cat" -> "cat"
    assert normalize_answer_mlqa("«the cat»", "en") == "cat"
    assert normalize_answer_mlqa("An apple, a day", "en") == "apple day"


def test_mlqa_chinese_mixed_segmentation():
    # "，" removed first, then each CJK char is a token, "2008" stays a run
    assert normalize_answer("北京大学，2008年", "zh") == "北 京 大 学 2008 年"
    # "、" (U+3001, Po) is punctuation
    assert normalize_answer("东京、大阪", "zh") == "东 京 大 阪"
    # the raw tokeniser keeps punctuation as tokens and splits runs on spaces
    assert mixed_segmentation("abc北京,de f") == ["abc", "北", "京", ",", "de", "f"]
    # 〇 (U+3007) is outside the script's [\u4e00-\u9fa5] range -> stays in a run
    assert mixed_segmentation("二〇〇八年") == ["二", "〇〇", "八", "年"]


def test_mlqa_chinese_em_f1_and_contrast_with_squad():
    golds = {"z1": ["北京大学"], "z2": ["2008年"], "z3": ["北京 大学"]}
    preds = {"z1": "北京", "z2": "2008 年。", "z3": "北京大学"}
    # zh: z1 [北,京] vs [北,京,大,学]: P=1, R=1/2 -> F1 2/3, EM 0
    #     z2 "2008 年" == "2008 年" -> 1/1; z3 whitespace is irrelevant -> 1/1
    # EM = 2/3; F1 = (2/3 + 1 + 1)/3 = 8/9
    out = squad_scores(preds, golds, lang="zh")
    assert out == {"exact_match": approx(200 / 3), "f1": approx(800 / 9)}
    # SQuAD rules: whitespace tokens only, "。" kept -> no token overlaps anywhere
    assert squad_scores(preds, golds) == {"exact_match": 0.0, "f1": 0.0}


def test_mlqa_arabic_al_removed_everywhere():
    # The script's pattern '\sال^|ال' reduces to "ال" anywhere (not only a
    # word-initial article): it is replaced by a space, even inside words.
    assert normalize_answer("الكتاب", "ar") == "كتاب"
    assert normalize_answer("الطالب", "ar") == "ط ب"  # ال|ط|ال|ب -> two tokens
    assert normalize_answer("قال", "ar") == "ق"  # verb "said", not an article
    golds = {"a1": ["الكتاب"], "a2": ["طالب"], "a3": ["طالب"]}
    preds = {"a1": "كتاب", "a2": "الطالب", "a3": "الطالب الجديد"}
    # a1: "كتاب" == "كتاب" -> EM 1. a2: "ط ب" == "ط ب" (طالب also contains ال) -> EM 1
    # a3: [ط, ب, جديد] vs [ط, ب]: P=2/3, R=1 -> F1 0.8, EM 0
    # EM = 2/3; F1 = (1 + 1 + 0.8)/3
    out = squad_scores(preds, golds, lang="ar")
    assert out == {"exact_match": approx(200 / 3), "f1": approx(100 * 2.8 / 3)}


def test_mlqa_hindi_danda_and_no_articles():
    # "।" (U+0964 DEVANAGARI DANDA, Po) is removed; nothing is an article in hi
    assert normalize_answer("नई दिल्ली।", "hi") == "नई दिल्ली"
    assert normalize_answer("a the b", "hi") == "a the b"
    # EM: MLQA hi matches (100); SQuAD keeps "।" -> "दिल्ली।" != "दिल्ली" (0).
    # F1 under SQuAD: [नई, दिल्ली।] vs [नई, दिल्ली] -> 1 common, P=R=1/2 -> 50
    assert squad_scores({"q": "नई दिल्ली।"}, {"q": ["नई दिल्ली"]}, lang="hi")["exact_match"] == 100.0
    assert squad_scores({"q": "नई दिल्ली।"}, {"q": ["नई दिल्ली"]}) == {
        "exact_match": 0.0, "f1": approx(50.0)}


def test_mlqa_vietnamese_german_spanish_articles():
    assert normalize_answer("Những con mèo của tôi", "vi") == "con mèo tôi"
    assert normalize_answer("Hà Nội là thủ đô, cái bàn", "vi") == "hà nội thủ đô bàn"
    assert normalize_answer("Der Hund und die Katze, das Haus", "de") == "hund und katze haus"
    assert normalize_answer("einen Dieser", "de") == "dieser"  # whole words only
    assert normalize_answer("El perro y la casa", "es") == "perro y casa"
    assert normalize_answer("Él y los gatos", "es") == "él y gatos"  # "él" is not "el"
    # MLQA EM/F1 in German: "die Katze" vs "Katze" -> EM 1 under de, but under
    # SQuAD rules "die" survives: [die, katze] vs [katze] -> EM 0, F1 2/3
    assert squad_scores({"q": "die Katze"}, {"q": ["Katze"]}, lang="de")["exact_match"] == 100.0
    assert squad_scores({"q": "die Katze"}, {"q": ["Katze"]})["f1"] == approx(200 / 3)


def test_mlqa_unknown_language():
    with pytest.raises(ValueError):
        normalize_answer("x", "fr")


# ------------------------------------------------------------------------- tagging
def test_tagging_ner_entities():
    golds = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "I-LOC", "O"]]
    preds = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "O", "O"]]
    # gold entities: PER(0-1), LOC(3), LOC(0-1 of sent 2) = 3; pred: PER(0-1), LOC(0) = 2
    # correct: PER only -> P = 1/2, R = 1/3, F1 = (1/3)/(5/6) = 2/5
    # tokens: 3/4 + 2/3 correct -> 5/7
    out = tagging_scores(preds, golds)
    assert out["precision"] == approx(50.0)
    assert out["recall"] == approx(100 / 3)
    assert out["f1"] == approx(40.0)
    assert out["accuracy"] == approx(500 / 7)


def test_tagging_default_mode_is_lenient():
    # default (non-strict) seqeval: I-PER after O starts a chunk, so I-PER I-PER
    # equals the gold PER(0-1) entity -> F1 100, though only 1/2 tags match
    out = tagging_scores([["I-PER", "I-PER"]], [["B-PER", "I-PER"]])
    assert (out["f1"], out["accuracy"]) == (approx(100.0), approx(50.0))


def test_tagging_pos_tags_without_prefix():
    # seqeval reads "NOUN" as prefix "N" + type "NOUN": equal adjacent tags merge
    # into one chunk. gold: NOUN(0-1), VERB(2); pred: NOUN(0), VERB(1-2) -> no chunk
    # matches -> F1 0 although 2/3 tokens are right.
    out = tagging_scores([["NOUN", "VERB", "VERB"]], [["NOUN", "NOUN", "VERB"]])
    assert out["f1"] == 0.0
    assert out["accuracy"] == approx(200 / 3)
    # gold: PRON, VERB, DET, NOUN(3-4) = 4 chunks; pred: PRON, VERB, DET, NOUN(3), ADJ(4) = 5
    # correct 3: P = 3/5, R = 3/4, F1 = 0.9/1.35 = 2/3; tokens 4/5
    golds = [["PRON", "VERB", "DET", "NOUN", "NOUN"]]
    preds = [["PRON", "VERB", "DET", "NOUN", "ADJ"]]
    out = tagging_scores(preds, golds)
    assert (out["precision"], out["recall"]) == (approx(60.0), approx(75.0))
    assert out["f1"] == approx(200 / 3)
    assert out["accuracy"] == approx(80.0)


def test_tagging_types_pos_tags_as_seqeval_0_did():
    # xtreme's and jiant's (2020) seqeval 0.0.x types "SCONJ" as "SCONJ"; seqeval 1.x would give "CONJ" to
    # SCONJ and CCONJ alike and score this 100. gold: NOUN, CCONJ, NOUN; pred: NOUN, SCONJ, NOUN -> 2 of 3
    # chunks on each side match: P = R = F1 = 2/3.
    out = tagging_scores([["NOUN", "SCONJ", "NOUN"]], [["NOUN", "CCONJ", "NOUN"]])
    assert (out["precision"], out["recall"], out["f1"]) == (approx(200 / 3),) * 3
    out = tagging_scores([["CCONJ"]], [["SCONJ"]])
    assert (out["f1"], out["accuracy"]) == (0.0, 0.0)
    # "S"-prefixed tags stay singletons: gold SYM SYM is two chunks, pred SYM X has one of them.
    out = tagging_scores([["SYM", "X"]], [["SYM", "SYM"]])
    assert (out["precision"], out["recall"]) == (approx(50.0), approx(50.0))
    # IOB tags are untouched: I-PER after O still opens a chunk (lenient mode).
    assert tagging_scores([["I-PER", "I-PER"]], [["B-PER", "I-PER"]])["f1"] == approx(100.0)


def test_tagging_silences_non_ne_tag_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tagging_scores([["NOUN", "VERB"]], [["NOUN", "VERB"]])
    assert not [w for w in caught if "seems not to be NE tag" in str(w.message)]


def test_tagging_length_mismatch_names_sentence():
    with pytest.raises(ValueError, match="sentence 1"):
        tagging_scores([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError):
        tagging_scores([["O"]], [["O"], ["O"]])


# ---------------------------------------------------------------------------- BUCC
def test_bucc_scores():
    gold = {("de1", "en1"), ("de2", "en2"), ("de3", "en3"), ("de4", "en4")}
    pred = {("de1", "en1"), ("de2", "en2"), ("de3", "en9")}
    # correct 2: P = 2/3, R = 2/4, F1 = 2*(1/3)/(7/6) = 4/7
    out = bucc_scores(pred, gold)
    assert out == {"precision": approx(200 / 3), "recall": approx(50.0), "f1": approx(400 / 7)}
    zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert bucc_scores({("de1", "en2")}, gold) == zero
    assert bucc_scores(set(), set()) == zero


# ---------------------------------------------------------------------- averaging
def test_task_average_per_task_metric():
    qa = {"en": {"exact_match": 70.0, "f1": 80.0}, "de": {"exact_match": 50.0, "f1": 70.0}}
    # avg EM 60, avg F1 75 -> (60 + 75)/2 = 67.5; F1 only -> 75
    assert task_average(qa, "mlqa") == approx(67.5)
    assert task_average(qa, "xquad", qa_metric="f1") == approx(75.0)
    # tagging uses f1 (not accuracy): (90 + 80)/2
    tag = {"en": {"f1": 90.0, "accuracy": 99.0}, "de": {"f1": 80.0, "accuracy": 97.0}}
    assert task_average(tag, "udpos") == approx(85.0)
    cls = {"en": {"accuracy": 90.0}, "fr": {"accuracy": 80.0}, "de": {"accuracy": 70.0}}
    assert task_average(cls, "xnli") == approx(80.0)
    assert task_average({"de": {"f1": 60.0, "precision": 1.0}, "fr": {"f1": 70.0}}, "bucc2018") == approx(65.0)
    with pytest.raises(ValueError, match="unknown XTREME/XTREME-R task"):
        task_average(cls, "copa")  # English-only: no benchmark score
    with pytest.raises(ValueError):
        task_average(cls, "panx")  # no f1 key
    with pytest.raises(ValueError):
        task_average(qa, "mlqa", qa_metric="em")


TASKS9 = {"pawsx": 88.0, "xnli": 80.0, "udpos": 76.0, "panx": 65.0, "xquad": 70.0,
          "mlqa": 60.0, "tydiqa": 55.0, "bucc2018": 75.0, "tatoeba": 50.0}


def test_xtreme_score_and_groups():
    # sum = 88+80+76+65+70+60+55+75+50 = 619 -> 619/9
    assert xtreme_score(TASKS9) == approx(619 / 9)
    assert group_scores(TASKS9) == {
        "classification": approx(84.0),  # (88+80)/2
        "tagging": approx(70.5),  # (76+65)/2
        "qa": approx(185 / 3),  # (70+60+55)/3
        "retrieval": approx(62.5),  # (75+50)/2
    }
    partial = {k: v for k, v in TASKS9.items() if k != "tatoeba"}
    assert xtreme_score(partial) is None
    assert "retrieval" not in group_scores(partial)
    assert xtreme_score({**TASKS9, "xcopa": 0.0}) == approx(619 / 9)  # extras ignored


def test_xtreme_r_score_groups_and_task_scores():
    from stilts_xling.metrics import xtreme_r_score

    tasks10 = {"xnli": 80.0, "xcopa": 60.0, "udpos": 76.0, "panx": 65.0, "xquad": 70.0, "mlqa": 60.0,
               "tydiqa": 55.0, "tatoeba": 50.0, "mewslix": 40.0, "lareqa": 30.0}
    # 80+60+76+65+70+60+55+50+40+30 = 586 -> 58.6; PAWS-X and BUCC are not part of XTREME-R
    assert xtreme_r_score(tasks10) == approx(58.6)
    assert xtreme_r_score({**tasks10, "pawsx": 0.0, "bucc2018": 0.0}) == approx(58.6)
    assert xtreme_r_score({k: v for k, v in tasks10.items() if k != "lareqa"}) is None
    assert xtreme_score(tasks10) is None  # no PAWS-X / BUCC: no XTREME score
    assert group_scores(tasks10, "xtreme-r") == {
        "classification": approx(70.0),  # (80+60)/2
        "tagging": approx(70.5),
        "qa": approx(185 / 3),
        "retrieval": approx(40.0),  # (50+40+30)/3
    }
    # mAP@20 and XCOPA accuracy averaged over languages like every other task
    assert task_average({"ar": {"map@20": 30.0}, "ja": {"map@20": 50.0}}, "mewslix") == approx(40.0)
    assert task_average({"it": {"accuracy": 55.0}, "zh": {"accuracy": 61.0}}, "xcopa") == approx(58.0)
    with pytest.raises(ValueError, match="map@20"):
        task_average({"ar": {"accuracy": 30.0}}, "lareqa")
