"""Readers of the original dataset formats: fixtures (exact values), DataError messages, real samples."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stilts_xling.readers import (
    READER_FAMILY, READERS, DataError, read_bucc, read_conllu, read_panx_iob, read_squad_json, read_tatoeba,
)

ASSETS = Path(__file__).resolve().parent / "assets"
SHARED = Path(os.environ.get("STILTS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
FAMILY_KEYS = {
    "classification": {"id", "text_a", "text_b", "label"},
    "multiple_choice": {"id", "context", "question", "choices", "label"},
    "tagging": {"id", "tokens", "tags"},
    "span_qa": {"id", "title", "context", "question", "answers", "is_impossible"},
    "mlm": {"id", "text"},
    "dual_encoder": {"id", "language", "query", "target", "candidate", "candidate_context", "candidate_id"},
}


def read(fmt: str, rel: str, lang: str | None = None, root: Path = ASSETS) -> list[dict]:
    records = READERS[fmt](root / rel, lang)
    assert records and all(set(r) == FAMILY_KEYS[READER_FAMILY[fmt]] for r in records)
    return records


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real data samples not found at {SHARED} (set STILTS_SHARED_DATA)")
    return SHARED


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_registry_is_complete():
    assert set(READERS) == set(READER_FAMILY) == {
        "mnli_jsonl", "snli_txt", "mnli_txt", "xnli_tsv", "xnli_mt_tsv", "anli_jsonl", "glue_qqp_tsv", "pawsx_tsv",
        "squad_json", "hellaswag_jsonl", "csqa_jsonl", "cosmosqa_csv", "cosmosqa_jsonl", "ccg_tsv", "conllu", "panx_iob",
        "glue_cola_tsv", "glue_sst2_tsv", "glue_mrpc_tsv", "glue_qnli_tsv", "glue_rte_tsv", "glue_wnli_tsv",
        "glue_stsb_tsv", "copa_jsonl", "xcopa_jsonl", "siqa_jsonl", "text_lines",
        "squad_sentences_json", "xquad_r_json", "mewslix_jsonl"}


# ------------------------------------------------------------------------------------------ fixtures

def test_anli_fixture():
    r = read("anli_jsonl", "anli/anli_v1.0/R1/train.jsonl")
    assert [x["label"] for x in r] == ["entailment", "neutral", "contradiction"]
    assert r[0] == {"id": "a1-tr-0001", "label": "entailment", "text_b": "The bridge is more than a century old.",
                    "text_a": "The Velmora Bridge is a stone footbridge over the Ashby river, built in 1821 and restored in 1990."}
    for rnd in ("R1", "R2", "R3"):
        for split in ("train", "dev", "test"):
            assert len(read("anli_jsonl", f"anli/anli_v1.0/{rnd}/{split}.jsonl")) == 3


def test_snli_fixture_skips_no_majority_and_accepts_short_train_rows():
    train = read("snli_txt", "snli/snli_1.0/snli_1.0_train.txt")
    assert [(x["id"], x["label"]) for x in train] == [
        ("100001.jpg#0r1n", "neutral"), ("100001.jpg#0r1c", "contradiction"), ("100001.jpg#0r1e", "entailment")]
    assert train[2]["text_a"] == "A child in a red coat feeds ducks at a pond."
    assert train[2]["text_b"] == "A child is outdoors near water."
    dev = read("mnli_txt", "snli/snli_1.0/snli_1.0_dev.txt")
    assert [x["id"] for x in dev] == ["200002.jpg#1r1e", "200002.jpg#1r1c", "300003.jpg#2r1n"]  # "-" row dropped


def test_qqp_fixture():
    train = read("glue_qqp_tsv", "qqp/QQP/train.tsv")
    assert [x["label"] for x in train] == ["1", "0", "1", "1"]
    assert train[2] == {"id": "503", "text_a": 'What does "serendipity" mean?',
                        "text_b": 'What is the meaning of the word "serendipity"?', "label": "1"}
    assert [x["id"] for x in read("glue_qqp_tsv", "qqp/QQP/dev.tsv")] == ["601", "602", "603"]
    test = read("glue_qqp_tsv", "qqp/QQP/test.tsv")
    assert [x["label"] for x in test] == [None, None, None]
    assert test[1]["text_a"] == "Where do penguins live?"


@pytest.mark.parametrize("lang,train", [("en", "train.tsv"), ("de", "translated_train.tsv"), ("zh", "translated_train.tsv")])
def test_pawsx_fixture_keeps_first_row(lang, train):
    rows = read("pawsx_tsv", f"pawsx/x-final/{lang}/{train}")
    assert [x["id"] for x in rows] == ["1", "2", "3", "4"] and [x["label"] for x in rows] == ["0", "1", "1", "0"]
    assert [x["id"] for x in read("pawsx_tsv", f"pawsx/x-final/{lang}/dev_2k.tsv")] == ["11", "12", "13"]
    assert [x["id"] for x in read("pawsx_tsv", f"pawsx/x-final/{lang}/test_2k.tsv")] == ["14", "15", "16"]
    if lang == "zh":
        assert rows[0]["text_a"] == "这条河从山丘流向东部海岸。"


def test_squad_v1_fixture():
    train = read("squad_json", "squad/train-v1.1.json")
    assert [x["id"] for x in train] == ["sq1-0001", "sq1-0002", "sq1-0003", "sq1-0004"]
    assert train[1]["title"] == "Halvard_Orchestra" and train[3]["title"] == "Green_tea"
    assert train[1]["answers"] == [{"text": "Mira Oberg", "answer_start": 91}]
    dev = read("squad_json", "squad/dev-v1.1.json")
    assert dev[0]["answers"] == [{"text": "eleven years", "answer_start": 101}, {"text": "eleven years", "answer_start": 101},
                                 {"text": "took eleven years", "answer_start": 96}]
    for rec in train + dev:
        assert not rec["is_impossible"]
        for a in rec["answers"]:
            assert rec["context"][a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]


def test_squad_v2_fixture():
    train = read("squad_json", "squad_v2/train-v2.0.json")
    assert [(x["id"], x["is_impossible"]) for x in train] == [
        ("sq2-0001", False), ("sq2-0002", True), ("sq2-0003", False), ("sq2-0004", True)]
    assert train[1]["answers"] == [] and train[0]["answers"] == [{"text": "1,800", "answer_start": 193}]
    dev = read("squad_json", "squad_v2/dev-v2.0.json")
    assert [x["is_impossible"] for x in dev] == [False, True, False]
    assert dev[2]["answers"] == [{"text": "the northern sea", "answer_start": 42}, {"text": "northern sea", "answer_start": 46}]


def test_hellaswag_fixture_joins_ctx_b_like_jiant():
    train = read("hellaswag_jsonl", "hellaswag/hellaswag_train.jsonl")
    assert train[0] == {"id": "11", "context": "A man dips a wide brush into a can of white paint.", "question": "",
                        "choices": ["he throws the can into the lake.", "he eats the brush slowly.",
                                    "he paints the first board of the fence.", "he sings to the paint can."], "label": 2}
    assert train[2]["choices"][1] == "[title] Loosen the roots gently. [step] Tap the old pot and lift the plant out."
    assert [x["label"] for x in read("hellaswag_jsonl", "hellaswag/hellaswag_val.jsonl")] == [3, 1, 0]


def test_csqa_fixture():
    train = read("csqa_jsonl", "commonsenseqa/train_rand_split.jsonl")
    assert train[1] == {"id": "fx0002", "context": "", "question": "Where would you borrow a novel for free?",
                        "choices": ["bakery", "library", "garage", "stadium", "pharmacy"], "label": 1}
    assert [x["label"] for x in train] == [0, 1, 2]
    assert [x["label"] for x in read("csqa_jsonl", "commonsenseqa/dev_rand_split.jsonl")] == [3, 4, 1]


def test_cosmosqa_csv_fixture_quoting_and_crlf():
    train = read("cosmosqa_csv", "cosmosqa/train.csv")
    assert [x["label"] for x in train] == [0, 1, 2]
    assert train[1]["context"] == 'My sister said "no thanks" to the cake , which surprised everyone .\nShe usually loves dessert .'
    assert train[1]["choices"][1] == "She usually loves dessert but refused it ."
    assert train[2]["context"].endswith("red and round .")  # commas inside a quoted field
    valid = read("cosmosqa_csv", "cosmosqa/valid.csv")
    assert [x["id"] for x in valid] == ["fxcos-1001", "fxcos-1002", "fxcos-1003"]
    assert valid[0]["context"] == "The power went out during the storm .\r\nWe lit candles and played cards ."
    assert valid[0]["label"] == 3 and valid[1]["question"] == "Why did the dog bark ?"


def test_ccg_fixture():
    train = read("ccg_tsv", "ccg/train.tsv")
    assert train[1] == {"id": "1", "tokens": ["Mary", "reads", "old", "books", "."],
                        "tags": ["N", "(S[dcl]\\NP)/NP", "N/N", "N", "."]}
    assert [len(x["tokens"]) for x in read("ccg_tsv", "ccg/dev.tsv")] == [4, 5, 3]


def test_conllu_english_fused_forms_and_empty_nodes():
    train = read("conllu", "udpos/UD_English-EWT/en_ewt-ud-train.conllu", "en")
    assert train[0] == {"id": "fx-en-train-0001", "tokens": ["I", "don't", "like", "rain", "."],
                        "tags": ["PRON", "AUX", "VERB", "NOUN", "PUNCT"]}  # do/n't tie -> AUX by precedence
    assert train[1]["tokens"][0] == "John's" and train[1]["tags"][0] == "PROPN"  # 's hangs below John
    assert train[2]["tokens"] == ["Sue", "bought", "apples", "and", "Tim", "pears", "."]  # empty node 5.1 skipped
    dev = read("conllu", "udpos/UD_English-EWT/en_ewt-ud-dev.conllu", "en")
    assert dev[0]["tokens"] == ["It's", "late", "."] and dev[0]["tags"] == ["PRON", "ADJ", "PUNCT"]
    test = read("conllu", "udpos/UD_English-EWT/en_ewt-ud-test.conllu", "en")
    assert [x["tags"] for x in test] == [["PRON", "AUX", "VERB", "PUNCT"], ["NOUN", "PUNCT"]]


def test_conllu_german_and_arabic():
    dev = read("conllu", "udpos/UD_German-GSD/de_gsd-ud-dev.conllu", "de")
    assert dev[0] == {"id": "fx-de-dev-1", "tokens": ["Wir", "gehen", "zum", "Markt", "."],
                      "tags": ["PRON", "VERB", "ADP", "NOUN", "PUNCT"]}
    assert read("conllu", "udpos/UD_German-GSD/de_gsd-ud-test.conllu", "de")[0]["tokens"][2:4] == ["im", "alten"]
    ar = read("conllu", "udpos/UD_Arabic-PADT/ar_padt-ud-dev.conllu", "ar")
    assert ar[0] == {"id": "fx-ar-dev-1", "tokens": ["وكتب", "الطالب", "بالقلم", "."],
                     "tags": ["VERB", "NOUN", "NOUN", "PUNCT"]}
    assert read("conllu", "udpos/UD_Arabic-PADT/ar_padt-ud-test.conllu", "ar")[0]["tags"] == ["VERB", "NOUN", "NOUN", "PUNCT"]


@pytest.mark.parametrize("lang", ["en", "de", "ar"])
def test_panx_fixtures(lang):
    for split in ("train", "dev", "test"):
        rows = read("panx_iob", f"panx/{lang}/{split}")
        assert len(rows) == 2 and all(len(x["tokens"]) == len(x["tags"]) for x in rows)
        assert not any(t.startswith(f"{lang}:") for x in rows for t in x["tokens"])
    if lang == "en":
        assert read("panx_iob", "panx/en/train")[1]["tokens"][-1] == "10:30"
    if lang == "ar":
        assert read("panx_iob", "panx/ar/train")[0] == {"id": "0", "tokens": ["زار", "أحمد", "القاهرة", "."],
                                                        "tags": ["O", "B-PER", "B-LOC", "O"]}


def test_xquad_fixture_parallel_ids():
    by_lang = {lang: read("squad_json", f"xquad/xquad.{lang}.json") for lang in ("en", "de", "zh")}
    assert {lang: [x["id"] for x in r] for lang, r in by_lang.items()} == {
        lang: ["xq-0001", "xq-0002", "xq-0003", "xq-0004"] for lang in by_lang}
    assert by_lang["zh"][0]["answers"] == [{"text": "14公里", "answer_start": 19}]
    assert by_lang["de"][2]["answers"] == [{"text": "nur im September", "answer_start": 45}]


@pytest.mark.parametrize("lang", ["en", "de", "zh"])
def test_mlqa_fixture(lang):
    for split in ("dev", "test"):
        rows = read("squad_json", f"mlqa/MLQA_V1/{split}/{split}-context-{lang}-question-{lang}.json", lang)
        assert len(rows) == 2
        for x in rows:
            (a,) = x["answers"]
            assert x["context"][a["answer_start"]:].startswith(a["text"])


def test_tydiqa_fixture_language_filter():
    train = read("squad_json", "tydiqa/tydiqa-goldp-v1.1-train.json")
    assert len(train) == 5 and train[3]["title"] == ""  # an article without a title
    en = read("squad_json", "tydiqa/tydiqa-goldp-v1.1-train.json", "en")
    assert [x["id"] for x in en] == ["english-1000000000000000001-0", "english--4000000000000000004-1"]
    fi = read("squad_json", "tydiqa/tydiqa-goldp-v1.1-train.json", "fi")
    assert fi[0]["answers"] == [{"text": "Helsinki", "answer_start": 0}]
    ar = read("squad_json", "tydiqa/tydiqa-goldp-v1.1-dev.json", "ar")
    assert ar[0]["answers"] == [{"text": "نهر النيل", "answer_start": 0}]
    with pytest.raises(DataError, match="for language 'sw'"):
        read_squad_json(ASSETS / "tydiqa/tydiqa-goldp-v1.1-dev.json", "sw")


def test_tatoeba_fixture():
    src, eng = read_tatoeba(ASSETS / "tatoeba", "deu")
    assert len(src) == len(eng) == 10
    assert (src[7], eng[7]) == ("Öffne bitte das Fenster.", "Please open the window.")
    src, eng = read_tatoeba(ASSETS / "tatoeba", "cmn")
    assert (src[0], eng[0]) == ("我饿了。", "I am hungry.")


def test_bucc_fixture():
    src, trg, gold = read_bucc(ASSETS / "bucc2018", "de", "dev")
    assert len(src) == 12 and len(trg) == 12
    assert gold == {("de-000001", "en-000010"), ("de-000002", "en-000003"), ("de-000003", "en-000005"),
                    ("de-000004", "en-000001"), ("de-000006", "en-000008")}
    assert src["de-000004"] == "Der Ausschuss genehmigte am Dienstag den neuen Haushalt."
    assert trg["en-000001"] == "The committee approved the new budget on Tuesday."
    src, trg, gold = read_bucc(ASSETS / "bucc2018", "zh", "test")
    assert gold is None and len(src) == 10
    assert len(read_bucc(ASSETS / "bucc2018", "zh", "dev")[2]) == 4


def test_bucc_original_release_names(tmp_path):
    folder = tmp_path / "bucc2018" / "fr-en"
    folder.mkdir(parents=True)
    write(folder, "fr-en.sample.fr", "fr-000001\tBonjour le monde.\nfr-000002\tIl pleut.\n")
    write(folder, "fr-en.sample.en", "en-000001\tIt is raining.\nen-000002\tHello world.\n")
    write(folder, "fr-en.sample.gold", "fr-000001\ten-000002\nfr-000002\ten-000001\n")
    write(folder, "fr-en.training.fr", "fr-000003\tMerci.\n")
    write(folder, "fr-en.training.en", "en-000003\tThanks.\n")
    _, _, gold = read_bucc(tmp_path / "bucc2018", "fr", "dev")
    assert gold == {("fr-000001", "en-000002"), ("fr-000002", "en-000001")}
    src, trg, gold = read_bucc(tmp_path / "bucc2018", "fr", "test")
    assert src == {"fr-000003": "Merci."} and gold is None
    with pytest.raises(DataError, match="no BUCC files for ru-en"):
        read_bucc(tmp_path / "bucc2018", "ru", "dev")


# ------------------------------------------------------------------------------------------ behaviour on edge cases

def test_qqp_known_line_break_defect_is_rejoined(tmp_path):
    p = write(tmp_path, "train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
              '7\t13\t14\t"Is this a ""good"" question?\n"\tIs it good?\t0\n8\t15\t16\tA?\tB?\t1\n')
    rows = READERS["glue_qqp_tsv"](p)
    assert rows[0] == {"id": "7", "text_a": 'Is this a "good" question?', "text_b": "Is it good?", "label": "0"}
    assert rows[1]["id"] == "8"


def test_xnli_mt_maps_contradictory_and_xnli_filters(tmp_path):
    p = write(tmp_path, "multinli.train.fr.tsv", "premise\thypo\tlabel\nIl dort .\tIl est réveillé .\tcontradictory\n")
    assert READERS["xnli_mt_tsv"](p) == [{"id": "0", "text_a": "Il dort .", "text_b": "Il est réveillé .", "label": "contradiction"}]
    header = "language\tgold_label\tsentence1\tsentence2\tpromptID\tpairID\n"
    p = write(tmp_path, "xnli.dev.tsv", header + 'fr\tneutral\tIl a dit "oui\tOui.\t1\t1\nde\tentailment\tA\tB\t1\t1\n')
    assert READERS["xnli_tsv"](p, "fr") == [{"id": "fr-1", "text_a": 'Il a dit "oui', "text_b": "Oui.", "label": "neutral"}]
    assert len(READERS["xnli_tsv"](p)) == 2
    with pytest.raises(DataError, match=r"xnli.dev.tsv: no records found for language 'sw'"):
        READERS["xnli_tsv"](p, "sw")


def test_mnli_jsonl_skips_dash_and_reads_bom(tmp_path):
    recs = [{"gold_label": "-", "pairID": "1n", "sentence1": "a", "sentence2": "b"},
            {"gold_label": "entailment", "pairID": "2e", "sentence1": "c", "sentence2": "d"}]
    p = write(tmp_path, "m.jsonl", "\ufeff" + "\n".join(json.dumps(r) for r in recs))
    assert READERS["mnli_jsonl"](p) == [{"id": "2e", "text_a": "c", "text_b": "d", "label": "entailment"}]


def test_panx_test_without_tags(tmp_path):
    p = write(tmp_path, "test", "de:Berlin\nde:ist\n\nde:Ja\n\n")
    assert read_panx_iob(p) == [{"id": "0", "tokens": ["Berlin", "ist"], "tags": None},
                                {"id": "1", "tokens": ["Ja"], "tags": None}]


def test_conllu_space_inside_token_and_withheld_forms(tmp_path):
    row = "{i}\t{f}\t_\t{u}\t_\t_\t{h}\t{r}\t_\t_\n"
    text = ("# sent_id = a\n" + row.format(i=1, f="sinh viên", u="NOUN", h=0, r="root") + "\n"
            + row.format(i=1, f="_", u="NOUN", h=0, r="root") + row.format(i=2, f="_", u="PUNCT", h=1, r="punct"))
    assert read_conllu(write(tmp_path, "vi.conllu", text)) == [{"id": "a", "tokens": ["sinhviên"], "tags": ["NOUN"]}]


def test_squad_unlabeled_test_answers_allowed(tmp_path):
    doc = {"data": [{"title": "t", "paragraphs": [{"context": "abc", "qas": [{"id": "q", "question": "?", "answers": []}]}]}]}
    assert read_squad_json(write(tmp_path, "x.json", json.dumps(doc)))[0]["answers"] == []


# ------------------------------------------------------------------------------------------ DataError messages

BAD_INPUTS = [
    ("anli_jsonl", "a.jsonl", '{"uid": "1", "context": "c", "hypothesis": "h", "label": "e"}\n{"uid": 2,\n',
     r"a\.jsonl:2: invalid JSON"),
    ("anli_jsonl", "a.jsonl", '{"uid": "1", "context": "c", "hypothesis": "h", "label": "x"}\n',
     r"a\.jsonl:1: label 'x' is not one of"),
    ("mnli_jsonl", "m.jsonl", '{"gold_label": "neutral", "sentence1": "a", "sentence2": "b"}\n',
     r"m\.jsonl:1: missing field 'pairID'"),
    ("mnli_txt", "m.txt", "gold_label\tsentence1\tsentence2\tpairID\nneutral\ta\tb\t1\nmaybe\ta\tb\t2\n",
     r"m\.txt:3: label 'maybe' is not one of"),
    ("pawsx_tsv", "dev_2k.tsv", "id\tsentence1\tsentence2\tlabel\n1\ta\tb\t1\n2\ta\tb\n",
     r"dev_2k\.tsv:3: expected 4 tab-separated columns as in the header, found 3"),
    ("pawsx_tsv", "dev_2k.tsv", "id\tsentence1\tsentence2\n1\ta\tb\n", r"dev_2k\.tsv:1: header lacks column\(s\) \['label'\]"),
    ("glue_qqp_tsv", "train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tq1\tq2\t0\textra\n",
     r"train\.tsv:2: expected 6 tab-separated columns"),
    ("glue_qqp_tsv", "train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tq1\tq2\tyes\n",
     r"train\.tsv:2: label 'yes'"),
    ("xnli_mt_tsv", "mt.tsv", "", r"mt\.tsv: empty file"),
    ("xnli_mt_tsv", "mt.tsv", "premise\thypo\tlabel\n", r"mt\.tsv: no records found;"),
    ("hellaswag_jsonl", "h.jsonl", '{"ind": 1, "ctx_a": "a", "ctx_b": "b", "endings": ["x", "y"], "label": 5}\n',
     r"h\.jsonl:1: label must be an index 0\.\.1"),
    ("csqa_jsonl", "c.jsonl", json.dumps({"id": "1", "answerKey": "F", "question": {
        "stem": "s", "choices": [{"label": "A", "text": "a"}, {"label": "B", "text": "b"}]}}) + "\n",
     r"c\.jsonl:1: answerKey 'F' is not one of the choice labels"),
    ("cosmosqa_csv", "valid.csv", 'id,context,question,answer0,answer1,answer2,answer3,label\r\n'
     'a,"multi\r\nline",q,0,1,2,3,1\r\nb,c,q,0,1,2,3\r\n', r"valid\.csv:4: expected 8 columns, found 7"),
    ("cosmosqa_jsonl", "t.jsonl", '{"id": "1", "context": "c", "question": "q", "answer0": "a"}\n',
     r"t\.jsonl:1: missing field 'answer1'"),
    ("ccg_tsv", "train.tsv", "The cat .\tNP N .\nA dog barks .\tNP N\n", r"train\.tsv:2: 4 tokens but 2 tags"),
    ("ccg_tsv", "train.tsv", "no tags here\n", r"train\.tsv:1: expected 'tokens<TAB>tags'"),
    ("conllu", "x.conllu", "# sent_id = 1\n1\tA\ta\tDET\n", r"x\.conllu:2: expected 10 tab-separated CoNLL-U columns"),
    ("conllu", "x.conllu", "1\tA\ta\tDT\t_\t_\t0\troot\t_\t_\n", r"x\.conllu:1: UPOS 'DT' is not a UD tag"),
    ("conllu", "x.conllu", "1\tA\ta\tDET\t_\t_\t0\troot\t_\t_\n3\tB\tb\tNOUN\t_\t_\t1\tdep\t_\t_\n",
     r"x\.conllu:2: word id 3 out of sequence"),
    ("conllu", "x.conllu", "# only a comment\n", r"x\.conllu: no sentences found"),
    ("conllu", "x.conllu", "1-3\tAB\t_\t_\t_\t_\t_\t_\t_\t_\n1\tA\ta\tDET\t_\t_\t2\tdet\t_\t_\n2\tB\tb\tNOUN\t_\t_\t0\troot\t_\t_\n",
     r"x\.conllu:1: multiword range 1-3 exceeds the sentence"),
    ("conllu", "x.conllu", "1\tA\ta\tDET\t_\t_\t0\troot\t_\t_\n2-3\tBC\t_\t_\t_\t_\t_\t_\t_\t_\n",
     r"x\.conllu:2: multiword range 2-3 overlaps another or lies past the last word"),
    ("panx_iob", "dev", "en:Paris\tB-LOC\nen:is\n", r"dev:2: some lines have a tag column and others do not"),
    ("panx_iob", "dev", "en:Paris\tB-CITY\n", r"dev:1: label 'B-CITY' is not one of"),
    ("panx_iob", "dev", "Paris\tB-LOC\n", r"dev:1: expected 'lang:token'"),
    ("squad_json", "s.json", '{"data": [\n{"title": "t",,}]}', r"s\.json:2: invalid JSON"),
    ("squad_json", "s.json", json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "abc def", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "def", "answer_start": 3}]}]}]}]}),
     r"s\.json:data\[0\]\.paragraphs\[0\]\.qas\[0\]: answer 'def' is not at answer_start 3"),
    # wrongly typed fields: a null where text belongs, a negative offset that would slice from the end
    ("mnli_jsonl", "m.jsonl", '{"gold_label": "neutral", "pairID": "1", "sentence1": "a", "sentence2": null}\n',
     r"m\.jsonl:1: field 'sentence2' is null, expected text \(a JSON string\)"),
    ("anli_jsonl", "a.jsonl", '{"uid": "1", "context": 7, "hypothesis": "h", "label": "e"}\n',
     r"a\.jsonl:1: field 'context' is a number \(7\), expected text"),
    ("hellaswag_jsonl", "h.jsonl", '{"ind": 1, "ctx_a": "a", "ctx_b": "b", "endings": ["x", null], "label": 0}\n',
     r"h\.jsonl:1: 'endings' must be a non-empty list of strings"),
    ("csqa_jsonl", "c.jsonl", '{"id": "1", "question": "what?"}\n',
     r"c\.jsonl:1: field 'question' is a string \(\"what\?\"\), expected an object"),
    ("squad_json", "s.json", json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "abc def", "qas": [
        {"id": "q1", "question": "?", "answers": None}]}]}]}),
     r"s\.json:data\[0\]\.paragraphs\[0\]\.qas\[0\]: field 'answers' is null, expected a list"),
    ("squad_json", "s.json", json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "abc def", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "abc", "answer_start": -7}]}]}]}]}),  # [-7:-4] is "abc"
     r"s\.json:data\[0\]\.paragraphs\[0\]\.qas\[0\]: answer 'abc' is not at answer_start -7"),
    ("squad_json", "s.json", json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "abc def", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "def", "answer_start": "4"}]}]}]}]}),
     r"s\.json:data\[0\]\.paragraphs\[0\]\.qas\[0\]: field 'answer_start' is a string \(\"4\"\), expected an "
     r"integer"),
    ("squad_json", "s.json", json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "abc", "qas": [
        {"id": "q1", "question": "?", "is_impossible": True, "answers": [{"text": "abc", "answer_start": 0}]}]}]}]}),
     r"s\.json:data\[0\]\.paragraphs\[0\]\.qas\[0\]: is_impossible is true"),
]


@pytest.mark.parametrize("fmt,name,text,pattern", BAD_INPUTS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_INPUTS)])
def test_data_error_messages(tmp_path, fmt, name, text, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        READERS[fmt](write(tmp_path, name, text))
    assert str(tmp_path) in str(info.value) and "; " in str(info.value)  # names the file and says how to fix


def test_retrieval_data_errors(tmp_path):
    write(tmp_path, "tatoeba.deu-eng.deu", "a\nb\nc\n")
    write(tmp_path, "tatoeba.deu-eng.eng", "a\nb\n")
    with pytest.raises(DataError, match=r"tatoeba\.deu-eng\.deu: 3 lines but tatoeba\.deu-eng\.eng has 2"):
        read_tatoeba(tmp_path, "deu")
    write(tmp_path, "de-en.dev.de", "de-1\tHallo\nde-1\tWelt\n")
    write(tmp_path, "de-en.dev.en", "en-1\tHello\n")
    with pytest.raises(DataError, match=r"de-en\.dev\.de:2: duplicate sentence id 'de-1'"):
        read_bucc(tmp_path, "de", "dev")
    write(tmp_path, "de-en.dev.de", "de-1\tHallo\n")
    write(tmp_path, "de-en.dev.gold", "de-1\ten-9\n")
    with pytest.raises(DataError, match=r"de-en\.dev\.gold:1: gold pair \(de-1, en-9\) names an unknown sentence id"):
        read_bucc(tmp_path, "de", "dev")
    write(tmp_path, "de-en.dev.en", "en-1 Hello\n")
    with pytest.raises(DataError, match=r"de-en\.dev\.en:1: expected 2 tab-separated fields"):
        read_bucc(tmp_path, "de", "dev")
    with pytest.raises(DataError, match="unknown BUCC split 'val'"):
        read_bucc(tmp_path, "de", "val")


# ------------------------------------------------------------------------------------------ real samples

def test_real_mnli_snli(shared):
    mnli = shared / "mnli/multinli_1.0"
    for split in ("train", "dev_matched", "dev_mismatched"):
        as_jsonl = read("mnli_jsonl", f"multinli_1.0_{split}.jsonl", root=mnli)
        as_txt = read("mnli_txt", f"multinli_1.0_{split}.txt", root=mnli)
        assert len(as_jsonl) == 5 and len(as_txt) == 4
        assert as_txt == as_jsonl[:4] or [x["id"] for x in as_txt] == [x["id"] for x in as_jsonl[:4]]
    first = read("mnli_jsonl", "multinli_1.0_dev_matched.jsonl", root=mnli)[0]
    assert (first["id"], first["label"], first["text_a"]) == ("63735n", "neutral", "The new rights are nice enough")
    sizes = {split: len(read("snli_txt", f"snli/snli_1.0/snli_1.0_{split}.txt", root=shared)) for split in ("train", "dev", "test")}
    assert sizes == {"train": 3, "dev": 2, "test": 1}


def test_real_xnli(shared):
    langs = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()
    for split in ("dev", "test"):
        assert len(read("xnli_tsv", f"xnli/XNLI-1.0/xnli.{split}.tsv", root=shared)) == 15
        for lang in ("ar", "zh", "en"):
            (rec,) = read("xnli_tsv", f"xnli/XNLI-1.0/xnli.{split}.tsv", lang, root=shared)
            assert rec["id"].startswith(f"{lang}-") and rec["label"] in ("entailment", "neutral", "contradiction")
    (zh,) = read("xnli_tsv", "xnli/XNLI-1.0/xnli.dev.tsv", "zh", root=shared)
    assert zh["label"] == "neutral" and zh["text_a"].startswith("他说")
    for lang in langs:
        mt = read("xnli_mt_tsv", f"xnli/XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv", root=shared)
        assert [x["label"] for x in mt] == ["neutral", "entailment", "entailment", "entailment"]


def test_real_anli_qqp(shared):
    for rnd in ("R1", "R2", "R3"):
        for split in ("train", "dev", "test"):
            rows = read("anli_jsonl", f"anli/anli_v0.1/{rnd}/{split}.jsonl", root=shared)
            assert len(rows) == 3 and all(len(x["id"]) == 36 for x in rows)
    assert read("anli_jsonl", "anli/anli_v0.1/R1/train.jsonl", root=shared)[0]["label"] == "entailment"
    train = read("glue_qqp_tsv", "qqp/QQP/train.tsv", root=shared)
    assert [(x["id"], x["label"]) for x in train] == [("133273", "0"), ("402555", "1"), ("360472", "0")]
    assert len(read("glue_qqp_tsv", "qqp/QQP/dev.tsv", root=shared)) == 2
    (test,) = read("glue_qqp_tsv", "qqp/QQP/test.tsv", root=shared)
    assert test["id"] == "0" and test["label"] is None


@pytest.mark.parametrize("lang", ["de", "en", "es", "fr", "ja", "ko", "zh"])
def test_real_pawsx_first_row_not_skipped(shared, lang):
    train = "train.tsv" if lang == "en" else "translated_train.tsv"
    expected = {train: ["1", "2", "3", "4"], "dev_2k.tsv": ["4", "6", "7", "9"], "test_2k.tsv": ["10", "12", "20", "26"]}
    for name, ids in expected.items():
        assert [x["id"] for x in read("pawsx_tsv", f"pawsx/x-final/{lang}/{name}", root=shared)] == ids


def test_real_multiple_choice(shared):
    hs = read("hellaswag_jsonl", "hellaswag/hellaswag_train.jsonl", root=shared)
    assert hs[0]["id"] == "4" and hs[0]["label"] == 3
    assert hs[0]["choices"][3] == "then , the man continues removing the snow on his car."
    assert [x["label"] for x in read("hellaswag_jsonl", "hellaswag/hellaswag_test.jsonl", root=shared)] == [None, None]
    cs = read("csqa_jsonl", "commonsenseqa/train_rand_split.jsonl", root=shared)
    assert [x["label"] for x in cs] == [1, 0, 0, 2, 1] and cs[0]["choices"][1] == "bookstore"
    assert len(read("csqa_jsonl", "commonsenseqa/dev_rand_split.jsonl", root=shared)) == 2
    assert [x["label"] for x in read("csqa_jsonl", "commonsenseqa/test_rand_split_no_answers.jsonl", root=shared)] == [None, None]
    valid = read("cosmosqa_csv", "cosmosqa/valid.csv", root=shared)
    assert len(valid) == 100 and [x["label"] for x in valid[:5]] == [1, 0, 0, 3, 1]
    assert all(len(x["choices"]) == 4 and "##" in x["id"] for x in valid)
    assert [x["label"] for x in read("cosmosqa_csv", "cosmosqa/train.csv", root=shared)] == [1, 0]
    test = read("cosmosqa_jsonl", "cosmosqa/test.jsonl", root=shared)
    assert len(test) == 2 and test[0]["label"] is None


def test_real_udpos(shared):
    expected = {"UD_English-EWT/en_ewt-ud": 50, "UD_German-GSD/de_gsd-ud": 50, "UD_Japanese-GSD/ja_gsd-ud": 25}
    for stem, n in expected.items():
        for split in ("dev", "test"):
            rows = read("conllu", f"udpos/{stem}-{split}.conllu", stem.split("/")[1][:2], root=shared)
            assert len(rows) == n and all(len(x["tokens"]) == len(x["tags"]) for x in rows)
    en = read("conllu", "udpos/UD_English-EWT/en_ewt-ud-dev.conllu", "en", root=shared)
    assert en[0]["tokens"] == ["From", "the", "AP", "comes", "this", "story", ":"]
    pairs = {(t, g) for x in en for t, g in zip(x["tokens"], x["tags"])}
    assert {("didn't", "AUX"), ("Today's", "NOUN")} <= pairs and not any(t in ("n't", "'s") for t, _ in pairs)
    de = read("conllu", "udpos/UD_German-GSD/de_gsd-ud-dev.conllu", "de", root=shared)
    assert ("zum", "ADP") in {(t, g) for x in de for t, g in zip(x["tokens"], x["tags"])}


@pytest.mark.parametrize("lang", ["ar", "de", "en", "hi", "ja", "sw", "zh"])
def test_real_panx(shared, lang):
    for split in ("train", "dev", "test"):
        rows = read("panx_iob", f"panx_wikiann/{lang}/{split}", root=shared)
        assert all(len(x["tokens"]) == len(x["tags"]) > 0 for x in rows)
        assert not any(t.startswith(f"{lang}:") for x in rows for t in x["tokens"])
    if lang == "ar":
        assert read("panx_iob", "panx_wikiann/ar/dev", root=shared)[0]["tags"] == ["O", "B-LOC"] + ["I-LOC"] * 4


def test_real_span_qa(shared):
    v2 = read("squad_json", "squad_v2/dev-v2.0.json", root=shared)
    assert len(v2) == 116 and sum(x["is_impossible"] for x in v2) == 65
    assert v2[0]["id"] == "56ddde6b9a695914005b9628" and v2[0]["answers"][0] == {"text": "France", "answer_start": 159}
    assert all(x["answers"] == [] for x in v2 if x["is_impossible"])
    ids = None
    for lang in "ar de el en es hi ro ru th tr vi zh".split():
        rows = read("squad_json", f"xquad/xquad.{lang}.json", root=shared)
        assert len(rows) == 97 and rows[0]["title"] == "Super_Bowl_50"
        ids = ids or [x["id"] for x in rows]
        assert [x["id"] for x in rows] == ids  # parallel across languages
    for split in ("dev", "test"):
        for lang in "ar de en es hi vi zh".split():
            (rec,) = read("squad_json", f"mlqa/MLQA_V1/{split}/{split}-context-en-question-{lang}.json", root=shared)
            assert len(rec["id"]) == 40 and rec["answers"]
    (zh,) = read("squad_json", "mlqa/MLQA_V1/dev/dev-context-en-question-zh.json", root=shared)
    assert zh["answers"] == [{"text": "The Penn", "answer_start": 49}]
    tydi = shared / "tydiqa_goldp"
    assert [x["id"][:8] for x in read("squad_json", "tydiqa-goldp-v1.1-train.json", root=tydi)] == ["finnish-", "finnish-"]
    assert len(read("squad_json", "tydiqa-goldp-v1.1-train.json", "fi", root=tydi)) == 2
    (ar,) = read("squad_json", "tydiqa-goldp-v1.1-dev.json", "ar", root=tydi)
    assert ar["id"] == "arabic-2387335860751143628-1" and ar["answers"][0]["answer_start"] == 394
    with pytest.raises(DataError, match="for language 'en'"):
        read_squad_json(tydi / "tydiqa-goldp-v1.1-train.json", "en")


def test_real_tatoeba(shared):
    sizes = {}
    for path in sorted((shared / "tatoeba").glob("tatoeba.*-eng.eng")):
        lang3 = path.name.split(".")[1].split("-")[0]
        src, eng = read_tatoeba(shared / "tatoeba", lang3)
        assert len(src) == len(eng) and all(eng)
        sizes[lang3] = len(src)
    assert len(sizes) == 14
    assert sizes == {l3: {"swh": 390, "tha": 548}.get(l3, 1000) for l3 in sizes}


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    tsv = tmp_path / "tatoeba.deu-eng.deu"
    tsv.write_bytes("\ufeffErste Zeile\n".encode("utf-8") + b"Caf\xe9 au lait\n")  # BOM, then a latin-1 byte
    (tmp_path / "tatoeba.deu-eng.eng").write_text("First line\nCoffee\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"tatoeba.deu-eng.deu:2: byte b'\\xe9' at column 4 is not UTF-8; convert"):
        read_tatoeba(tmp_path, "deu")
    tsv.write_bytes("\ufeffErste Zeile\nCafé au lait\n".encode("utf-8"))
    assert read_tatoeba(tmp_path, "deu") == (["Erste Zeile", "Café au lait"], ["First line", "Coffee"])
    squad = tmp_path / "squad.json"
    squad.write_bytes(b'{"data": [], "version": "caf\xe9"}')  # the 29th byte
    with pytest.raises(DataError, match=r"squad.json:byte 29: not UTF-8 text"):
        read_squad_json(squad)
