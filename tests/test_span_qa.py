"""Span QA: windows, post-processing across windows, SQuAD v2 null decision, offsets, metrics, CLI run.

The hand-computed cases use a context of ten words that the bundled tiny tokenizer keeps as one token
each ("Ġapple", "Ġchild", ...), and the one-token question "doctor". With max_length 11 the XLM-R pair
layout <s> q </s></s> context </s> leaves 11 - 1 - 4 = 6 context tokens per window; doc_stride 3 makes
windows over context words [0..5], [3..8], [6..9], and context word g sits at token 4 + g - window_start.
"""
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ASSETS
from stilts_xling.config import ExperimentConfig
from stilts_xling.data import load_examples
from stilts_xling.model import TINY_TOKENIZER, load_tokenizer
from stilts_xling.readers import read_squad_json
from stilts_xling.tasks.registry import family_of, get_task
from stilts_xling.tasks.span_qa import FAMILY, QAPrediction, SpanQAFamily

WORDS = "apple child pilot baker farmer window letter school driver market".split()
CONTEXT = " ".join(WORDS)
SMALL = SpanQAFamily(doc_stride=3)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(TINY_TOKENIZER))


def example(answer_words: list[int], id_: str = "q1") -> dict:
    text = " ".join(WORDS[i] for i in answer_words)
    return {"id": id_, "context": CONTEXT, "question": "doctor", "answers": [{"text": text, "answer_start": CONTEXT.index(text)}]}


def logits_for(features: list[dict], values: dict) -> list[torch.Tensor]:
    """values: {(window, token, 0 start | 1 end): logit}; every other logit is 0."""
    rows = [torch.zeros(len(f["input_ids"]), 2) for f in features]
    for (w, t, k), v in values.items():
        rows[w][t, k] = v
    return rows


def decode(tok, values: dict, family=SMALL, task="squad_v1", answer_words=(5, 6)) -> QAPrediction:
    ex = example(list(answer_words))
    feats = family.featurize(get_task(task), [ex], tok, 11)
    return family.predict(get_task(task), [ex], feats, logits_for(feats, values))["q1"]


# ------------------------------------------------------------------------------------------ features

def test_answer_straddling_two_windows_is_labelled_only_where_complete(tok):
    feats = SMALL.featurize(get_task("squad_v1"), [example([5, 6])], tok, 11)  # "window letter"
    assert [f["window_start"] for f in feats] == [0, 3, 6]
    assert [len(f["input_ids"]) for f in feats] == [11, 11, 9]  # last window: words 6..9
    # Window 0 holds "window" but not "letter": CLS. Window 1: words 5, 6 -> tokens 4+2, 4+3.
    assert [(f["start_positions"], f["end_positions"]) for f in feats] == [(0, 0), (6, 7), (0, 0)]
    starts = [0, 6, 12, 18, 24, 31]
    assert feats[0]["offsets"] == [None] * 4 + [(s, s + len(w)) for s, w in zip(starts, WORDS)] + [None]
    assert all(f["example_index"] == 0 for f in feats)


def test_answer_inside_two_windows_is_labelled_in_both(tok):
    feats = SMALL.featurize(get_task("squad_v1"), [example([7])], tok, 11)  # "school", word 7
    assert [(f["start_positions"], f["end_positions"]) for f in feats] == [(0, 0), (8, 8), (5, 5)]


def test_long_question_is_clipped_and_unanswerable_gets_cls(tok):
    ex = {**example([0]), "question": "doctor teacher singer", "answers": []}
    feats = SpanQAFamily(doc_stride=3, max_query_length=2).featurize(get_task("squad_v2"), [ex], tok, 12)
    # <s> doctor teacher </s></s>: the context starts at token 5 in every window.
    assert feats[0]["offsets"][5] == (0, 5) and all(f["offsets"][:6].count(None) == 5 for f in feats)
    assert all((f["start_positions"], f["end_positions"]) == (0, 0) for f in feats)


def test_hub_answer_columns_give_the_same_features(tok):
    ex = example([5, 6])
    hub = {**ex, "answers": {"text": [ex["answers"][0]["text"]], "answer_start": [ex["answers"][0]["answer_start"]]}}
    spec = get_task("squad_v1")
    assert SMALL.featurize(spec, [hub], tok, 11) == SMALL.featurize(spec, [ex], tok, 11)
    assert SMALL.score(spec, {"q1": "window letter"}, [hub], "en")["exact_match"] == 100.0


# ------------------------------------------------------------------------------------------ post-processing

def test_best_span_over_windows_answer_complete_only_in_second(tok):
    # Window 0: "apple" scores 1 + 1; window 1: "window letter" scores 4 + 4.
    pred = decode(tok, {(0, 4, 0): 1, (0, 4, 1): 1, (1, 6, 0): 4, (1, 7, 1): 4})
    assert pred == "window letter" and pred.null_diff == 0 - 8


def test_start_counts_only_in_its_max_context_window(tok):
    # Word 5 is max-context in window 1 (min(2, 3) + .06 beats window 0's min(5, 0) + .06), so window 0's
    # "window" (5 + 5) is not a candidate and window 1's "window letter" (4 + 4) wins.
    assert decode(tok, {(0, 9, 0): 5, (0, 9, 1): 5, (1, 6, 0): 4, (1, 7, 1): 4}) == "window letter"
    # Control: word 1 exists only in window 0, so "child" (5 + 5) wins.
    assert decode(tok, {(0, 5, 0): 5, (0, 5, 1): 5, (1, 6, 0): 4, (1, 7, 1): 4}) == "child"


def test_max_answer_length_and_end_before_start(tok):
    six_words = {(0, 4, 0): 9, (0, 9, 1): 9}  # apple .. window: 6 tokens
    assert decode(tok, six_words, SpanQAFamily(doc_stride=3, max_answer_length=6)) == "apple child pilot baker farmer window"
    # Too long at 5: the best remaining pair is start "apple" (9) with the first zero-logit context end,
    # "apple" itself (token order breaks the tie among zeros).
    assert decode(tok, six_words, SpanQAFamily(doc_stride=3, max_answer_length=5)) == "apple"
    # End logit peaks before the start: that pair is skipped; "baker" (9 + 0) is next.
    assert decode(tok, {(0, 7, 0): 9, (0, 5, 1): 9}) == "baker"


def test_squad_v2_null_score_is_min_over_windows(tok):
    span = {(1, 6, 0): 4, (1, 7, 1): 4}  # "window letter" = 8
    low = {(0, 0, 0): 3, (0, 0, 1): 3, (1, 0, 0): 1, (1, 0, 1): 1, (2, 0, 0): 4, (2, 0, 1): 5}  # null = min(6, 2, 9)
    pred = decode(tok, {**span, **low}, task="squad_v2")
    assert pred == "window letter" and pred.null_diff == 2 - 8
    high = {(w, 0, k): 5 for w in range(3) for k in range(2)}  # null = 10 > 8
    pred = decode(tok, {**span, **high}, task="squad_v2")
    assert pred == "" and pred.null_diff == 10 - 8
    assert decode(tok, {**span, **high}, task="squad_v1") == "window letter"  # v1 never abstains


@pytest.mark.parametrize("task", ["squad_v1", "squad_v2"])
def test_a_span_of_only_a_word_boundary_token_is_passed_over(tok, task):
    # "apple 北京": the byte-level tokenizer gives a lone "Ġ" with empty offsets before 北 (XLM-R's lone "▁"
    # spans just the space). Its own span (9 + 9) has no text, so the best span with text wins: from the
    # "Ġ" start (9) to 北's end (5) = 14, text "北"; SQuAD v2's null comparison is against it: 0 - 14.
    ex = {"id": "q1", "context": "apple 北京", "question": "doctor", "answers": [{"text": "北京", "answer_start": 6}]}
    spec = get_task(task)
    (feat,) = SMALL.featurize(spec, [ex], tok, 64)
    offsets = feat["offsets"]
    blank = next(i for i, o in enumerate(offsets) if o is not None and o[0] == o[1])
    bei = [i for i, o in enumerate(offsets) if o == (6, 7)]
    assert blank == bei[0] - 1 and len(bei) == 2
    row = torch.zeros(len(feat["input_ids"]), 2)
    row[blank] = 9
    row[bei[0], 0] = row[bei[-1], 1] = 5
    pred = SMALL.predict(spec, [ex], [feat], [row])["q1"]
    assert pred == "北" and pred.null_diff == 0 - 14


@pytest.mark.parametrize("context,answer", [
    ("北京大学是中国的一所大学。", "中国"), ("北京大学是中国的一所大学。", "北京大学"), ("他在北京大学读书", "读书"),
    ("ذهب الولد إلى المدرسة في الصباح", "المدرسة"), ("ذهب الولد إلى المدرسة في الصباح", "الولد"),
    ("ذهب الولد إلى المدرسة في الصباح", "الصباح"), ("Das Kind öffnete das Fenster", "öffnete"),
])
@pytest.mark.parametrize("max_length", [384, 24])  # one window; several small ones
def test_non_latin_answers_round_trip_by_character_offsets(tok, context, answer, max_length):
    ex = {"id": "x", "context": context, "question": "Was?", "answers": [{"text": answer, "answer_start": context.index(answer)}]}
    spec = get_task("xquad")
    feats = SpanQAFamily(doc_stride=4).featurize(spec, [ex], tok, max_length)
    assert any(f["start_positions"] for f in feats)
    gold = {(w, f[k], i): 10 for w, f in enumerate(feats) for i, k in enumerate(("start_positions", "end_positions"))}
    assert SpanQAFamily(doc_stride=4).predict(spec, [ex], feats, logits_for(feats, gold))["x"] == answer


def test_answer_text_keeps_trailing_combining_marks_and_drops_spaces():
    import unicodedata
    from stilts_xling.tasks.span_qa import answer_text

    # Decomposed "Il a été élu": I0 l1 _2 a3 _4 e5 U+0301 6 t7 e8 U+0301 9 _10. XLM-R composes before it
    # splits, so the token "été" gets offsets (5, 9): the last accent belongs to no token.
    context = unicodedata.normalize("NFD", "Il a été élu en 2005.")
    assert answer_text(context, 5, 9) == unicodedata.normalize("NFD", "été") == context[5:10]
    assert answer_text(context, 4, 9) == context[5:10]  # an offset that starts at the space before the word
    assert answer_text(context, 0, 2) == "Il"  # nothing to extend over
    # Devanagari: the vowel sign E (U+0947) after "नमस्त" completes the word "नमस्ते".
    assert answer_text("नमस्ते दुनिया", 0, 5) == "नमस्ते"
    assert answer_text("abc", 1, 3) == "bc"  # end of text
    assert answer_text("a  b", 1, 3) == ""  # whitespace only: no answer


def test_prediction_is_a_string_that_keeps_its_null_diff_through_pickle_and_json():
    import copy
    import pickle

    pred = QAPrediction("Denver", -2.5)
    for clone in (pickle.loads(pickle.dumps(pred)), copy.deepcopy(pred)):
        assert clone == "Denver" and clone.null_diff == -2.5
    assert json.dumps({"q": pred}) == '{"q": "Denver"}'  # XTREME's submission format: id -> text


# ------------------------------------------------------------------------------------------ head and metrics

def test_head_masks_padding_and_averages_start_end_losses():
    head = FAMILY.make_head(get_task("squad_v1"), 4)
    hidden = torch.randn(2, 5, 4)
    batch = {"attention_mask": torch.tensor([[1] * 5, [1, 1, 1, 0, 0]]),
             "start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 2])}
    loss, logits = FAMILY.forward(head, hidden, hidden[:, 0], batch)
    assert logits.shape == (2, 5, 2) and bool((logits[1, 3:] == -1e4).all())
    raw = head(hidden).masked_fill(batch["attention_mask"].unsqueeze(-1) == 0, -1e4)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(raw[..., 0], batch["start_positions"]) + ce(raw[..., 1], batch["end_positions"])) / 2
    assert torch.allclose(loss, expected)
    assert FAMILY.forward(head, hidden, hidden[:, 0], {"attention_mask": batch["attention_mask"]})[0] is None


def qa(id_, answers):
    return {"id": id_, "context": "", "question": "", "answers": [{"text": a, "answer_start": 0} for a in answers]}


def test_score_squad_v1_mlqa_and_v2_by_hand():
    golds = [qa("a", ["Denver Broncos"]), qa("b", ["Santa Clara, California", "Levi's Stadium"]), qa("c", [])]
    # a: articles dropped -> EM 1. b: "santa clara" vs "santa clara california": P 1, R 2/3, F1 .8. c: no gold, skipped.
    out = FAMILY.score(get_task("xquad"), {"a": "the Denver Broncos", "b": "Santa Clara", "c": "x"}, golds, "de")
    assert out == pytest.approx({"exact_match": 50.0, "f1": 90.0, "em_f1": 70.0})
    # MLQA: zh strips Unicode punctuation and splits CJK characters; SQuAD's script (XQuAD) does neither.
    zh = [qa("z", ["北京大学"])]
    assert FAMILY.score(get_task("mlqa"), {"z": "北京大学。"}, zh, "zh")["exact_match"] == 100.0
    assert FAMILY.score(get_task("xquad"), {"z": "北京大学。"}, zh, "zh")["f1"] == 0.0
    assert FAMILY.score(get_task("mlqa"), {"d": "der Hund"}, [qa("d", ["Hund"])], "de")["em_f1"] == 100.0
    # v2: q1 right, q2 unanswerable and abstained, q3 answerable but abstained (null won by 1.5).
    v2 = [qa("q1", ["Denver"]), qa("q2", []), qa("q3", ["Paris"])]
    preds = {"q1": QAPrediction("Denver", -3.0), "q2": QAPrediction("", 2.0), "q3": QAPrediction("", 1.5)}
    out = FAMILY.score(get_task("squad_v2"), preds, v2, "en")
    assert out["exact"] == pytest.approx(200 / 3) and out["em_f1"] == pytest.approx(200 / 3)
    assert (out["HasAns_exact"], out["NoAns_exact"]) == (50.0, 100.0)
    # Official best threshold: all "" (1 right), then answer in ascending null_diff: q1 -> 2 right.
    assert out["best_exact"] == pytest.approx(200 / 3) and out["best_exact_thresh"] == -3.0


# ------------------------------------------------------------------------------------------ specs and data

def test_specs_and_tydiqa_trains_on_english_only():
    for name in ("squad_v1", "squad_v2", "xquad", "mlqa", "tydiqa"):
        spec = get_task(name)
        assert family_of(spec) is FAMILY and spec.metric == "em_f1"
        assert (spec.train.max_length, spec.train.batch_size, spec.train.epochs, spec.train.lr) == (384, 16, 2, 1e-5)
    assert get_task("xquad").train_task == get_task("mlqa").train_task == "squad_v1"
    assert len(get_task("xquad").languages) == 11 and len(get_task("tydiqa").languages) == 9
    assert set(get_task("xquad").files.splits) == {"dev"}  # XTREME has no separate XQuAD test
    cfg = ExperimentConfig(data_dir=str(ASSETS))
    train = load_examples(get_task("tydiqa"), "train", "en", cfg)
    assert len(train) == 2 and all(ex["id"].startswith("english-") for ex in train)
    assert [ex["id"].split("-")[0] for ex in load_examples(get_task("tydiqa"), "dev", "ar", cfg)] == ["arabic"]


def test_stilts_run_writes_rows_for_every_qa_task_and_language(tmp_path, cli):
    langs = {"xquad": ["en", "de", "zh"], "mlqa": ["en", "de", "zh"], "tydiqa": ["en", "ar", "ru", "fi"]}
    train = {"epochs": 1, "max_steps": 2, "lr": 3e-3, "batch_size": 4, "max_length": 64, "eval_every": 2, "patience": 0}
    config = {"run_dir": str(tmp_path / "run"), "data_dir": str(ASSETS), "offline": True,
              "model": {"name": "tiny:xlm-roberta", "tiny_layers": 1, "tiny_hidden": 32},
              "intermediate": {"tasks": ["squad_v1"], "train": train},
              "xtreme": {"tasks": list(langs), "splits": ["dev", "test"], "train": train, "languages": langs}}
    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    got = {(r["task"], r["language"], r["split"]) for r in rows if r["metric"] == "em_f1"}
    expected = {(t, lang, "dev") for t, ls in langs.items() for lang in ls} | {("mlqa", lang, "test") for lang in langs["mlqa"]}
    assert got == expected | {("squad_v1", "en", "dev")}
    assert all(0 <= r["value"] <= 100 for r in rows if r["metric"] in ("exact_match", "f1", "em_f1"))


# ------------------------------------------------------------------------------------------ real samples

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("task,rel", [("xquad", "xquad/xquad.de.json"), ("xquad", "xquad/xquad.zh.json"),
                                      ("xquad", "xquad/xquad.ar.json"), ("squad_v2", "squad_v2/dev-v2.0.json")])
def test_gold_positions_reproduce_gold_answers_on_real_samples(tok, task, rel):
    """Gold start/end as logits give back the gold answer for every answer that survives tokenization.

    With the tiny byte-level tokenizer the rest are (a) answers longer than max_answer_length (30)
    tokens: long de/ar/en phrases at several tokens per word, and (b) zh answers whose first or last
    character shares a BPE token with a neighbour ("次擒" in "136 次擒"), so no token span slices out
    exactly that text. XLM-R's vocabulary has far fewer of (a); (b) happens with any subword vocabulary
    that merges across the answer boundary (the transformers processor has the same limit)."""
    if not (SHARED / rel).is_file():
        pytest.skip(f"real data sample not present at {SHARED / rel}")
    spec, examples = get_task(task), read_squad_json(SHARED / rel)
    feats = FAMILY.featurize(spec, examples, tok, 384)
    gold = [torch.zeros(len(f["input_ids"]), 2) for f in feats]
    for row, f in zip(gold, feats):
        row[f["start_positions"], 0] = row[f["end_positions"], 1] = 10  # CLS for windows without the answer
    preds = FAMILY.predict(spec, examples, feats, gold)
    survivors, too_long, split_by_token = [], [], []
    for i, ex in enumerate(examples):
        labelled = [f for f in feats if f["example_index"] == i and f["start_positions"]]
        if not ex["answers"]:
            survivors.append(ex)
            continue
        assert labelled, f"{ex['id']}: the answer is inside no window"
        f = labelled[0]
        s, e = f["start_positions"], f["end_positions"]
        if e - s + 1 > FAMILY.max_answer_length:
            too_long.append(ex)
        elif ex["context"][f["offsets"][s][0]:f["offsets"][e][1]] != ex["answers"][0]["text"]:
            split_by_token.append(ex)
        else:
            survivors.append(ex)
    assert len(survivors) >= 0.85 * len(examples)
    if not rel.endswith("zh.json"):
        assert not split_by_token, [ex["answers"][0]["text"] for ex in split_by_token]  # (b) is zh-only here
    scores = FAMILY.score(spec, preds, survivors, "en")
    assert scores["em_f1"] == 100.0, [(ex["answers"], preds[ex["id"]]) for ex in survivors
                                      if ex["answers"] and preds[ex["id"]] != ex["answers"][0]["text"]]
    if task == "squad_v2":
        assert all(preds[ex["id"]] == "" and preds[ex["id"]].null_diff > 0 for ex in examples if not ex["answers"])
        assert scores["NoAns_exact"] == 100.0 and not math.isinf(scores["best_exact_thresh"])
