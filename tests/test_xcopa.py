"""XTREME-R's XCOPA target: COPA/XCOPA/Social IQa readers on their fixtures, the pairing XTREME-R's
run_xcopa.py uses, the specs, and the SIQa -> COPA -> XCOPA smoke config through the real CLI."""
import json
from pathlib import Path

import pytest

from conftest import REPO
from stilts_xling.languages import XTREME_R_LANGUAGES
from stilts_xling.model import TINY_TOKENIZER, load_tokenizer
from stilts_xling.readers import READERS, DataError
from stilts_xling.results import read_rows
from stilts_xling.tasks.registry import FAMILIES, get_task

ASSETS = Path(__file__).resolve().parent / "assets"
SMOKE_XCOPA = REPO / "configs" / "smoke" / "xcopa.yaml"
FAMILY = FAMILIES["multiple_choice"]


def test_copa_reader_on_fixture():
    records = READERS["copa_jsonl"](ASSETS / "copa" / "COPA" / "val.jsonl")
    assert len(records) == 4 and [r["label"] for r in records] == [0, 1, 0, 1]
    assert records[0] == {"id": "400", "context": "The baby cried.", "question": "effect",
                          "choices": ["Her mother picked her up.", "Her mother painted the fence."], "label": 0}


def test_xcopa_reader_on_fixture():
    records = READERS["xcopa_jsonl"](ASSETS / "xcopa" / "data" / "zh" / "val.zh.jsonl")
    assert records == [
        {"id": "1", "context": "灯熄灭了。", "question": "cause", "choices": ["灯泡烧坏了。", "房间被粉刷了。"], "label": 0},
        {"id": "2", "context": "冰淇淋融化了。", "question": "cause", "choices": ["它被放在冰箱里。", "它被放在太阳下。"],
         "label": 1}]
    assert [r["id"] for r in READERS["xcopa_jsonl"](ASSETS / "xcopa" / "data" / "it" / "test.it.jsonl")] == ["103", "104"]


def test_siqa_reader_maps_the_answer_letter():
    records = READERS["siqa_jsonl"](ASSETS / "siqa" / "socialIQa_v1.4_trn.jsonl")
    assert [r["label"] for r in records] == [0, 1, 2, 1]  # correct: A B C B
    assert records[0] == {"id": "0", "context": "Tracy forgot her lunch at home.",
                          "question": "What will Tracy want to do next?",
                          "choices": ["buy some food", "paint the house", "go to sleep"], "label": 0}


def test_reader_errors(tmp_path):
    bad = tmp_path / "val.jsonl"
    bad.write_text(json.dumps({"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0,
                               "idx": 1}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"val.jsonl:1: question 'why' is not 'cause' or 'effect'"):
        READERS["xcopa_jsonl"](bad)
    siqa = tmp_path / "dev.jsonl"
    siqa.write_text(json.dumps({"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c",
                                "correct": "D"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dev.jsonl:1: 'correct' is 'D', not A, B or C"):
        READERS["siqa_jsonl"](siqa)


def test_pairing_follows_run_xcopa():
    tok = load_tokenizer(str(TINY_TOKENIZER))
    xcopa = READERS["xcopa_jsonl"](ASSETS / "xcopa" / "data" / "tr" / "val.tr.jsonl")
    (f, _) = FAMILY.featurize(get_task("xcopa"), xcopa, tok, 128)
    # run_xcopa.py: first = f"{premise} What was the {question}?", second = the choice; the question stays English.
    assert f["input_ids"] == [tok("Lamba karardı. What was the cause?", "Ampul yandı.")["input_ids"],
                              tok("Lamba karardı. What was the cause?", "Oda boyandı.")["input_ids"]]
    assert f["labels"] == 0
    siqa = READERS["siqa_jsonl"](ASSETS / "siqa" / "socialIQa_v1.4_dev.jsonl")
    first = FAMILY.featurize(get_task("siqa"), siqa, tok, 128)[0]["input_ids"]
    # SIQa: first = f"{context} {question}".
    assert first[1] == tok("Alex gave a gift to a neighbor. Why did Alex do this?", "to be rude")["input_ids"]


def test_specs():
    xcopa, copa, siqa = get_task("xcopa"), get_task("copa"), get_task("siqa")
    assert xcopa.languages == XTREME_R_LANGUAGES["xcopa"] and len(xcopa.languages) == 11
    assert (xcopa.phases, xcopa.train_task, xcopa.num_choices, xcopa.metric) == (("xtreme",), "copa", 2, "accuracy")
    assert xcopa.files.splits == {"dev": "data/{lang}/val.{lang}.jsonl", "test": "data/{lang}/test.{lang}.jsonl"}
    assert (copa.num_choices, siqa.num_choices) == (2, 3) and "intermediate" in siqa.phases
    # train_xcopa.sh for XLM-R Large: lr 3e-5, batch 2 x 16, 5 epochs, max length 128.
    for spec in (xcopa, copa, siqa):
        assert (spec.train.lr, spec.train.batch_size, spec.train.epochs, spec.train.max_length) == (3e-5, 32, 5, 128)


def test_copa_hub_row():
    row = {"premise": "The lamp went dark.", "choice1": "The bulb burned out.", "choice2": "The room was painted.",
           "question": "cause", "label": 0, "idx": 3}
    assert FAMILY.hub_example(get_task("copa"), row, 0) == {
        "id": "3", "context": "The lamp went dark.", "question": "cause",
        "choices": ["The bulb burned out.", "The room was painted."], "label": 0}
    assert FAMILY.hub_example(get_task("xcopa"), {**row, "label": -1}, 0)["label"] is None


def test_smoke_xcopa_runs_the_xtreme_r_recipe(tmp_path, cli):
    run_dir = tmp_path / "run"
    result = cli("run", SMOKE_XCOPA, f"run_dir={run_dir}")
    assert result.exit_code == 0, result.output
    rows = read_rows(run_dir / "results.jsonl")
    (siqa,) = [r for r in rows if r["phase"] == "intermediate"]
    assert (siqa["task"], siqa["split"], siqa["metric"]) == ("siqa", "dev", "accuracy")
    xcopa = [r for r in rows if r["task"] == "xcopa"]
    assert {(r["language"], r["split"]) for r in xcopa} == {(lang, split) for lang in ("it", "tr", "zh")
                                                            for split in ("dev", "test")}
    # Two examples per file: every accuracy is 0, 50 or 100.
    assert all(r["metric"] == "accuracy" and r["value"] in (0.0, 50.0, 100.0) for r in xcopa)
    assert all(r["train_task"] == "copa" and r["encoder"] == str(run_dir / "intermediate" / "encoder") for r in xcopa)
    lines = (run_dir / "predictions" / "xcopa" / "test-zh.tsv").read_text().split()
    assert len(lines) == 2 and set(lines) <= {"0", "1"}
