"""`stilts score` on hand-computed cases; each expected value is worked out in the comment beside it."""
import json

import pytest

from stilts_xling.readers import READERS, DataError
from stilts_xling.scoring import score_files


def squad_file(path, qas):
    """A SQuAD-format gold file; every answer is placed at the start of its own paragraph."""
    paragraphs = [{"context": gold + " 。", "qas": [{"id": qid, "question": "?", "answers": [
        {"text": gold, "answer_start": 0}]}]} for qid, gold in qas]
    path.write_text(json.dumps({"version": "1.0", "data": [{"title": "t", "paragraphs": paragraphs}]},
                               ensure_ascii=False), encoding="utf-8")
    return path


# (lang, [(gold, prediction)], EM, F1): q1 matches only after the language's normalisation, q2 overlaps.
MLQA_CASES = [
    # zh: "。" is punctuation -> EM 1; mixed segmentation splits CJK chars: 北京 vs 北京大学 -> P=2/2, R=2/4,
    # F1=2/3. EM=(1+0)/2=50, F1=(1+2/3)/2=83.33
    ("zh", [("北京大学", "北京大学。"), ("北京大学", "北京")], 50.0, 83.3333),
    # ar: MLQA removes every "ال": الكتاب الأحمر -> [كتاب, أحمر] = pred -> EM 1; مدينة القاهرة -> [مدينة, قاهرة]
    # vs القاهرة -> [قاهرة]: P=1, R=1/2, F1=2/3 -> EM 50, F1 83.33
    ("ar", [("الكتاب الأحمر", "كتاب أحمر"), ("مدينة القاهرة", "القاهرة")], 50.0, 83.3333),
    # hi: "।" (danda) is Unicode punctuation -> EM 1; [नई, दिल्ली] vs [दिल्ली, शहर]: 1 common, P=R=1/2,
    # F1=1/2 -> EM 50, F1 75
    ("hi", [("भारत की राजधानी।", "भारत की राजधानी"), ("नई दिल्ली", "दिल्ली शहर")], 50.0, 75.0),
    # vi: "những" is an article -> EM 1; [hà, nội] vs [thành, phố, hà, nội]: P=2/4, R=1, F1=2/3
    ("vi", [("những cuốn sách", "cuốn sách"), ("Hà Nội", "thành phố Hà Nội")], 50.0, 83.3333),
    # de: "der"/"ein" are articles -> EM 1; [großes, haus] vs [großes, rotes, haus]: P=2/3, R=1, F1=0.8
    ("de", [("der Hund", "Hund"), ("ein großes Haus", "großes rotes Haus")], 50.0, 90.0),
    # en: [cat] = [cat] -> EM 1; [cat] vs [black, cat]: P=1/2, R=1, F1=2/3
    ("en", [("The cat.", "cat"), ("the cat", "a black cat")], 50.0, 83.3333),
]


@pytest.mark.parametrize("lang,pairs,em,f1", MLQA_CASES, ids=[c[0] for c in MLQA_CASES])
def test_mlqa_language_specific_scores(tmp_path, cli, lang, pairs, em, f1):
    gold = squad_file(tmp_path / "gold.json", [(f"q{i}", g) for i, (g, _) in enumerate(pairs)])
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({f"q{i}": p for i, (_, p) in enumerate(pairs)}, ensure_ascii=False))
    result = cli("score", "--task", "mlqa", "--lang", lang, "--predictions", pred, "--gold", gold)
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["exact_match"] == pytest.approx(em, abs=1e-3)
    assert scores["f1"] == pytest.approx(f1, abs=1e-3)


def test_xquad_uses_squad_normalisation_for_every_language(tmp_path):
    # SQuAD v1.1 splits on whitespace only: "北京大学" vs "北京" share no token -> F1 0 (MLQA would give 66.7).
    gold = squad_file(tmp_path / "g.json", [("a", "北京大学")])
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps({"a": "北京"}, ensure_ascii=False))
    assert score_files("xquad", "zh", pred, gold) == {"exact_match": 0.0, "f1": 0.0}
    assert score_files("mlqa", "zh", pred, gold)["f1"] == pytest.approx(200 / 3)


def test_missing_qa_prediction_counts_as_wrong(tmp_path):
    gold = squad_file(tmp_path / "g.json", [("a", "Paris"), ("b", "Rome")])
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps({"a": "Paris"}))
    assert score_files("xquad", "en", pred, gold) == {"exact_match": 50.0, "f1": 50.0}


def test_qa_gold_is_scored_on_its_answer_texts_as_the_official_scripts_do(tmp_path):
    # evaluate-v1.1.py reads only ids and answer texts: an off answer_start (here 7, where "Paris" is at 0)
    # must not stop scoring, though training refuses such a file.
    doc = {"data": [{"title": "t", "paragraphs": [{"context": "Paris is big.", "qas": [
        {"id": "a", "question": "?", "answers": [{"text": "Paris", "answer_start": 7}]}]}]}]}
    gold = tmp_path / "g.json"
    gold.write_text(json.dumps(doc))
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps({"a": "Paris"}))
    assert score_files("xquad", "en", pred, gold) == {"exact_match": 100.0, "f1": 100.0}
    with pytest.raises(DataError, match="is not at answer_start 7"):
        READERS["squad_json"](gold)


def test_tagging_seqeval_entities(tmp_path):
    # Sentence 1: gold PER(0-1), LOC(3); pred PER(0-1). Sentence 2: gold ORG = pred ORG.
    # 3 gold entities, 2 predicted, 2 correct: P=1, R=2/3, F1=0.8.
    gold = tmp_path / "gold.tsv"
    gold.write_text("John\tB-PER\nSmith\tI-PER\nin\tO\nBerlin\tB-LOC\n\nACME\tB-ORG\nrocks\tO\n")
    pred = tmp_path / "pred.tsv"
    pred.write_text("B-PER\nI-PER\nO\nO\n\nB-ORG\nO\n")
    scores = score_files("panx", "de", pred, gold)
    assert scores["precision"] == pytest.approx(100.0)
    assert scores["recall"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(80.0)


def test_classification_labels_and_original_file(tmp_path):
    pred = tmp_path / "p.tsv"
    pred.write_text("entailment\nneutral\ncontradiction\nneutral\n")
    gold = tmp_path / "g.txt"
    gold.write_text("entailment\nneutral\ncontradiction\ncontradiction\n")
    assert score_files("xnli", "en", pred, gold) == {"accuracy": 75.0}  # 3 of 4
    pred.write_text("a\n")
    with pytest.raises(DataError, match="must align"):
        score_files("xnli", "en", pred, gold)


def test_bucc_pairs(tmp_path):
    # 3 predicted, 4 gold, 2 shared: P=2/3, R=1/2, F1=2PR/(P+R)=(2/3)/(7/6)=4/7.
    pred = tmp_path / "p.tsv"
    pred.write_text("de-1\ten-1\nde-2\ten-2\nde-3\ten-9\n")
    gold = tmp_path / "g.tsv"
    gold.write_text("de-1\ten-1\nde-2\ten-2\nde-3\ten-3\nde-4\ten-4\n")
    scores = score_files("bucc2018", "de", pred, gold)
    assert scores["precision"] == pytest.approx(200 / 3)
    assert scores["recall"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(400 / 7)


def test_tatoeba_indices(tmp_path):
    pred = tmp_path / "p.tsv"
    pred.write_text("0\n1\n2\n4\n4\n")
    gold = tmp_path / "g.tsv"
    gold.write_text("0\n1\n2\n3\n4\n")
    assert score_files("tatoeba", "de", pred, gold) == {"accuracy": 80.0}


def test_unknown_task_is_a_clear_error(tmp_path, cli):
    result = cli("score", "--task", "xnlii", "--lang", "de", "--predictions", tmp_path / "p", "--gold", tmp_path / "g")
    assert result.exit_code == 2 and "did you mean 'xnli'" in result.output
