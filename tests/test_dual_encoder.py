"""XTREME-R's dual-encoder retrieval targets (LAReQA on XQuAD-R, Mewsli-X): readers of the original
formats on their fixtures, the sentence breaker, the family (pairs, loss, pool, mAP@20) against
xtreme's definitions, the specs, and the smoke config through the real CLI."""
import json
from pathlib import Path

import pytest
import torch

from conftest import REPO
from stilts_xling.config import load_config
from stilts_xling.data import load_examples
from stilts_xling.languages import XTREME_R_LANGUAGES
from stilts_xling.model import TINY_TOKENIZER, load_tokenizer
from stilts_xling.readers import READERS, DataError
from stilts_xling.results import read_rows
from stilts_xling.sentence_breaks import sentence_breaks
from stilts_xling.tasks.dual_encoder import DualEncoderHead, Pool, lengths
from stilts_xling.tasks.registry import FAMILIES, get_task

ASSETS = Path(__file__).resolve().parent / "assets"
SMOKE = REPO / "configs" / "smoke" / "xtreme_r_retrieval.yaml"
FAMILY = FAMILIES["dual_encoder"]


def write(tmp_path: Path, name: str, obj) -> Path:
    path = tmp_path / name
    text = (json.dumps(obj, ensure_ascii=False) if isinstance(obj, dict)
            else "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in obj))
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ readers

KEYS = {"id", "language", "query", "target", "candidate", "candidate_context", "candidate_id"}


@pytest.mark.parametrize("fmt,rel", [
    ("squad_sentences_json", "squad/train-v1.1.json"), ("xquad_r_json", "lareqa/xquad-r/en.json"),
    ("mewslix_jsonl", "mewslix/wikipedia_pairs-train.jsonl"), ("mewslix_jsonl", "mewslix/wikinews_mentions-test.jsonl"),
    ("mewslix_jsonl", "mewslix/candidate_set_entities.jsonl")])
def test_every_fixture_record_has_the_schema(fmt, rel):
    records = READERS[fmt](ASSETS / rel)
    assert records and all(set(r) == KEYS for r in records)
    # each record is a question, a candidate, or both (a training pair)
    assert all(r["query"] is not None or r["candidate"] is not None for r in records)

def test_xquad_r_reader_questions_and_every_sentence():
    records = READERS["xquad_r_json"](ASSETS / "lareqa" / "xquad-r" / "ar.json", "ar")
    questions = [r for r in records if r["query"] is not None]
    assert [q["id"] for q in questions] == [f"lq-00{i}_ar" for i in range(1, 6)]
    assert questions[1] == {"id": "lq-002_ar", "language": "ar", "query": "ما النهر الذي يعبره الجسر؟",
                            "target": "lq-002", "candidate": None, "candidate_context": None, "candidate_id": None}
    candidates = [r for r in records if r["candidate"] is not None]
    # utils_lareqa: uid "<lang>_<paragraph number from 1>_<sentence index>"; the last sentence of the
    # second paragraph answers nothing.
    assert [(c["candidate_id"], c["target"]) for c in candidates] == [
        ("ar_1_0", "lq-001"), ("ar_1_1", "lq-002"), ("ar_1_2", "lq-003"),
        ("ar_2_0", "lq-004"), ("ar_2_1", "lq-005"), ("ar_2_2", None)]
    assert candidates[1]["candidate"] == "يعبر الجسر نهر فيل عند أضيق نقطة فيه."
    assert candidates[1]["candidate_context"].startswith("افتتح جسر هالدن عام 1884.")
    # Without a language the file's stem names it (xtreme reads the language from "<lang>.json").
    assert {r["language"] for r in READERS["xquad_r_json"](ASSETS / "lareqa" / "xquad-r" / "zh.json")} == {"zh"}


def test_xquad_r_shared_sentences_and_skipped_questions(tmp_path):
    context = "A b. C d. A b."
    doc = {"data": [{"paragraphs": [{"context": context, "sentence_breaks": [[0, 4], [5, 9], [10, 14]], "qas": [
        {"id": "q1", "question": "first?", "answers": [{"text": "b", "answer_start": 2}]},
        {"id": "q2", "question": "second?", "answers": [{"text": "C", "answer_start": 5}]},
        {"id": "q3", "question": "gap?", "answers": [{"text": " ", "answer_start": 4}]}]}]}]}
    records = READERS["xquad_r_json"](write(tmp_path, "en.json", doc))
    assert [r["id"] for r in records if r["query"]] == ["q1_en", "q2_en"]  # q3 starts between sentences
    # utils_lareqa marks every sentence whose text equals the answer sentence ("A b." twice).
    assert [(r["candidate_id"], r["target"]) for r in records if r["candidate"]] == [
        ("en_1_0", "q1"), ("en_1_1", "q2"), ("en_1_2", "q1")]


def test_squad_sentences_reader_pairs_each_question_with_its_inferred_sentence():
    records = READERS["squad_sentences_json"](ASSETS / "squad" / "dev-v1.1.json")
    assert [(r["id"], r["candidate_id"]) for r in records] == [("sq1-1001", "1_1"), ("sq1-1002", "1_2"),
                                                              ("sq1-1003", "1_0")]
    assert records[0]["candidate"] == "Work on the canal began in 1870 and took eleven years."
    assert records[0]["candidate_context"].startswith("The Ostrava Canal links the river Mell")
    assert all(r["target"] == r["candidate_id"] and r["language"] == "en" for r in records)


def test_mewslix_reader_all_three_layouts():
    mx = ASSETS / "mewslix"
    (pair, *_) = READERS["mewslix_jsonl"](mx / "wikipedia_pairs-dev.jsonl")
    assert pair == {"id": "wp-dev-1", "language": "en", "query": "Glass Hall: Concerts are held in { Glass Hall } .",
                    "target": "Q9007", "candidate": "Glass Hall is a concert hall in Tessel. It seats 1,800 people.",
                    "candidate_context": None, "candidate_id": "Q9007"}
    mentions = READERS["mewslix_jsonl"](mx / "wikinews_mentions-dev.jsonl")
    # preprocess_mention: the mention's sentence only, the dateline newline a space, braces already in the
    # text escaped to parentheses, "{ m }" around the mention and the mention repeated in front.
    assert mentions[0]["query"] == ("Tessel Symphony: 4 May 2021 The Halvard Orchestra played the (restored) "
                                    "{ Tessel Symphony } in Glass Hall.")
    assert (mentions[2]["query"], mentions[2]["language"], mentions[2]["target"]) == (
        "ハルデン橋: { ハルデン橋 } の開通を祝う式典が開かれた。", "ja", "Q9003")
    assert [m["id"] for m in READERS["mewslix_jsonl"](mx / "wikinews_mentions-test.jsonl", "ar")] == [
        "wn-test-ar-1", "wn-test-ar-2"]
    entities = READERS["mewslix_jsonl"](mx / "candidate_set_entities.jsonl")
    assert len(entities) == 8 and all(e["candidate_id"] == e["target"] == e["id"] for e in entities)
    # preprocess_entity_description: the sentences joined by one space.
    assert entities[2]["candidate"] == "ハルデン橋は、ヴェル川に架かる石造りの橋である。 1884年に開通した。"


def test_reader_errors_name_file_and_place(tmp_path):
    bad = tmp_path / "wikinews_mentions-dev.jsonl"
    bad.write_text('{"context": {"language": "en"}, "mentions": []}\n{not json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"wikinews_mentions-dev.jsonl:2: invalid JSON"):
        READERS["mewslix_jsonl"](bad)
    mx = json.loads((ASSETS / "mewslix" / "wikinews_mentions-dev.jsonl").read_text().splitlines()[1])  # the ja article
    no_text = {**mx, "context": {**mx["context"], "text": ""}}  # the released *_no_text files
    with pytest.raises(DataError, match=r"no_text.jsonl:1: mention .* get-mewsli-x.sh"):
        READERS["mewslix_jsonl"](write(tmp_path, "no_text.jsonl", [no_text]))
    across = {**mx, "context": {**mx["context"], "sentence_spans": [{"start": 0, "end": 3}, {"start": 3, "end": 30}]}}
    with pytest.raises(DataError, match=r"across.jsonl:1: mention 'ハルデン橋' is not inside one sentence"):
        READERS["mewslix_jsonl"](write(tmp_path, "across.jsonl", [across]))
    with pytest.raises(DataError, match=r"other.jsonl:1: not a Mewsli-X record"):
        READERS["mewslix_jsonl"](write(tmp_path, "other.jsonl", [{"premise": "p"}]))
    doc = json.loads((ASSETS / "lareqa" / "xquad-r" / "en.json").read_text())
    del doc["data"][0]["paragraphs"][0]["sentence_breaks"]
    with pytest.raises(DataError, match=r"en.json:data\[0\].paragraphs\[0\]: missing field 'sentence_breaks'"):
        READERS["xquad_r_json"](write(tmp_path, "en.json", doc))
    doc = json.loads((ASSETS / "lareqa" / "xquad-r" / "en.json").read_text())
    doc["data"][1]["paragraphs"][0]["qas"][0]["answers"] *= 2
    with pytest.raises(DataError, match=r"de.json:data\[1\].paragraphs\[0\].qas\[0\]: 2 answers"):
        READERS["xquad_r_json"](write(tmp_path, "de.json", doc))


def test_sentence_breaks_follow_sb_sed():
    text = 'Dr. Smith met J. R. R. Tolkien in Jan. 1950.  He said "Hi." It rained.[citation needed] The end.'
    # Titles, initials and months rejoin; two spaces stay outside both sentences; the citation stays.
    assert [text[a:b] for a, b in sentence_breaks(text)] == [
        "Dr. Smith met J. R. R. Tolkien in Jan. 1950.", 'He said "Hi."', "It rained.[citation needed]", "The end."]
    assert list(sentence_breaks("First line.\nSecond line.")) == [(0, 11), (12, 24)]  # offsets of the original
    text = "The score was 3 vs. 2 at half time. Fans cheered. Beyonce released I Am... Sasha Fierce."
    assert [text[a:b] for a, b in sentence_breaks(text)] == [
        "The score was 3 vs. 2 at half time.", "Fans cheered.", "Beyonce released I Am... Sasha Fierce."]


# ------------------------------------------------------------------------------------------ family

def test_featurize_pairs_with_xtreme_lengths():
    tok = load_tokenizer(str(TINY_TOKENIZER))
    lareqa = get_task("lareqa")
    assert lengths(lareqa, 352) == (96, 256) and lengths(lareqa, 64) == (32, 32)
    assert lengths(get_task("mewslix"), 64) == (64, 64)
    pairs = READERS["squad_sentences_json"](ASSETS / "squad" / "dev-v1.1.json")
    (f, *_) = FAMILY.featurize(lareqa, pairs, tok, 352)
    assert f["input_ids"] == [tok(pairs[0]["query"])["input_ids"],
                              tok(pairs[0]["candidate"], pairs[0]["candidate_context"])["input_ids"]]
    short = FAMILY.featurize(lareqa, pairs, tok, 32)[0]["input_ids"]
    assert len(short[1]) == 16  # candidate pair cut longest-first to 32 - 16
    questions = READERS["xquad_r_json"](ASSETS / "lareqa" / "xquad-r" / "zh.json")
    with pytest.raises(DataError, match="record 'lq-001_zh' is not a \\(question, candidate\\) pair"):
        FAMILY.featurize(lareqa, questions, tok, 64)


def test_forward_is_in_batch_softmax_over_scaled_cosines():
    torch.manual_seed(0)
    head = DualEncoderHead(8)
    assert head.scale.item() == 100.0  # BertForRetrieval's logit_scale init
    pooled = torch.randn(6, 8)  # 3 pairs flattened: q0 c0 q1 c1 q2 c2
    batch = {"input_ids": torch.zeros(3, 2, 5, dtype=torch.long)}
    loss, rows = FAMILY.forward(head, None, pooled, batch)
    vectors = torch.nn.functional.normalize(torch.tanh(head.dense(pooled)), dim=-1)
    logits = 100 * vectors[0::2] @ vectors[1::2].T
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, torch.arange(3)))
    torch.testing.assert_close(rows, vectors.view(3, 16))  # per pair: question vector, then candidate vector
    none, single = FAMILY.forward(head, None, pooled, {"input_ids": torch.zeros(6, 5, dtype=torch.long)})
    assert none is None and torch.allclose(single.norm(dim=-1), torch.ones(6))


def test_lareqa_relevance_spans_languages():
    records = [r for lang in ("en", "ar", "zh")
               for r in READERS["xquad_r_json"](ASSETS / "lareqa" / "xquad-r" / f"{lang}.json", lang)]
    pool = Pool(records)
    assert len(pool.ids) == 18
    assert [pool.ids[j] for j in pool.relevant("lq-002")] == ["en_1_1", "ar_1_1", "zh_1_1"]
    assert pool.relevant("nothing") == []


def test_predict_and_score_on_a_dev_pool():
    # Three pairs, two questions about candidate "s1". Vectors [question | candidate] in 2-D:
    # q_a = (1, 0) ranks s1 (0.6, 0.8) before s2 (0, 1): relevant s1 at rank 1 -> AP 1.
    # q_b = (0, 1) ranks s2 (1) before s1 (.8): relevant s1 at rank 2 -> AP 1/2.
    # q_c = (0, 1) wants s2 at rank 1 -> AP 1.  mAP = (1 + .5 + 1) / 3.
    examples = [{"id": "a", "query": "qa", "candidate": "s1", "candidate_id": "s1", "target": "s1"},
                {"id": "b", "query": "qb", "candidate": "s1", "candidate_id": "s1", "target": "s1"},
                {"id": "c", "query": "qc", "candidate": "s2", "candidate_id": "s2", "target": "s2"}]
    features = [{"example_index": i} for i in range(3)]
    logits = [torch.tensor([1.0, 0.0, 0.6, 0.8]), torch.tensor([0.0, 1.0, 0.6, 0.8]), torch.tensor([0.0, 1.0, 0.0, 1.0])]
    spec = get_task("mewslix")
    predictions = FAMILY.predict(spec, examples, features, logits)
    assert predictions == {"a": ["s1", "s2"], "b": ["s2", "s1"], "c": ["s2", "s1"]}
    assert FAMILY.score(spec, predictions, examples, "en") == {"map@20": pytest.approx(100 * 2.5 / 3)}


# ------------------------------------------------------------------------------------------ specs

def test_specs_follow_the_xtreme_scripts():
    lareqa, mewslix, squad = get_task("lareqa"), get_task("mewslix"), get_task("squad_retrieval")
    assert mewslix.languages == XTREME_R_LANGUAGES["mewslix"] == tuple("ar de en es fa ja pl ro ta tr uk".split())
    assert lareqa.languages == tuple("ar de el en es hi ru th tr vi zh".split())
    for spec in (lareqa, mewslix):
        assert (spec.phases, spec.group, spec.metric, spec.hub) == (("xtreme",), "retrieval", "map@20", None)
    # train_lareqa.sh: lr 2e-5, 3 epochs, 4 per GPU x 4 accumulation, length 352, no warmup or decay.
    t = lareqa.train
    assert (t.lr, t.epochs, t.batch_size, t.micro_batch_size, t.max_length, t.warmup, t.weight_decay) == (
        2e-5, 3, 16, 4, 352, 0.0, 0.0)
    assert lareqa.train_task == "squad_retrieval" and squad.train == lareqa.train
    # train_mewslix.sh for xlm-roberta-large: lr 1e-5, 2 epochs, 8 per GPU x 4, length 64.
    t = mewslix.train
    assert (t.lr, t.epochs, t.batch_size, t.micro_batch_size, t.max_length) == (1e-5, 2, 32, 8, 64)
    assert mewslix.files.splits["test"] == ("wikinews_mentions-test.jsonl", "candidate_set_entities.jsonl")
    assert mewslix.dev_split == "wikipedia_dev"


def test_hub_source_is_refused_clearly():
    cfg = load_config(SMOKE, ["data_source=hub"])
    for name in ("lareqa", "mewslix"):
        with pytest.raises(DataError, match=f"task '{name}' has no hub source for split 'dev'; use data_source: files"):
            load_examples(get_task(name), "dev", "en", cfg)


# ------------------------------------------------------------------------------------------ end to end

def test_smoke_config_scores_every_language_and_split(tmp_path, cli):
    run_dir = tmp_path / "run"
    result = cli("eval-xtreme", SMOKE, f"run_dir={run_dir}")
    assert result.exit_code == 0, result.output
    rows = [r for r in read_rows(run_dir / "results.jsonl") if r["metric"] == "map@20"]
    got = {(r["task"], r["language"], r["split"]) for r in rows}
    assert got == ({("lareqa", lang, "dev") for lang in ("en", "ar", "zh")}
                   | {("mewslix", lang, split) for lang in ("en", "ar", "ja") for split in ("dev", "test")})
    assert all(0 <= r["value"] <= 100 for r in rows)
    assert all(r["train_task"] == ("squad_retrieval" if r["task"] == "lareqa" else "mewslix") for r in rows)
    sizes = {(r["task"], r["split"]): r["value"] for r in read_rows(run_dir / "results.jsonl")
             if r["metric"] == "candidates"}
    assert sizes == {("lareqa", "dev"): 18, ("mewslix", "dev"): 8, ("mewslix", "test"): 8}  # one pool per split

    # The prediction files rank the whole pool (fewer than 20 here) and score back to the rows' values.
    predictions = run_dir / "predictions" / "mewslix" / "test-ar.json"
    ranked = json.loads(predictions.read_text())
    assert set(ranked) == {"wn-test-ar-1", "wn-test-ar-2"} and all(len(v) == 8 for v in ranked.values())
    gold = tmp_path / "test-ar.json"  # xtreme mock_test_data/labels/mewslix layout
    gold.write_text(json.dumps({"wn-test-ar-1": ["Q9006"], "wn-test-ar-2": ["Q9002"]}), encoding="utf-8")
    scored = cli("score", "--task", "mewslix", "--lang", "ar", "--predictions", predictions, "--gold", gold)
    assert scored.exit_code == 0, scored.output
    (row,) = [r for r in rows if (r["task"], r["language"], r["split"]) == ("mewslix", "ar", "test")]
    assert json.loads(scored.output)["map@20"] == pytest.approx(row["value"], abs=1e-5)
    lareqa_zh = json.loads((run_dir / "predictions" / "lareqa" / "dev-zh.json").read_text())
    assert set(lareqa_zh) == {f"lq-00{i}_zh" for i in range(1, 6)} and all(len(v) == 18 for v in lareqa_zh.values())

    before = (run_dir / "results.jsonl").read_text()
    again = cli("eval-xtreme", SMOKE, f"run_dir={run_dir}")
    assert again.exit_code == 0 and again.output.count("skipping") == 2
    assert (run_dir / "results.jsonl").read_text() == before
