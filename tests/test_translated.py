"""Machine-translated intermediate data (translated.py): the XNLI-MT and translate-train SQuAD fixtures,
language choice, concatenation, missing files, and the smoke config through the real CLI."""
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO
from stilts_xling import translated
from stilts_xling.config import ExperimentConfig, TaskOptions
from stilts_xling.readers import READERS, DataError
from stilts_xling.results import read_rows
from stilts_xling.tasks.registry import TASKS, get_task

ASSETS = Path(__file__).resolve().parent / "assets"
SMOKE_TRANSLATED = REPO / "configs" / "smoke" / "translated.yaml"
CFG = ExperimentConfig(data_dir=str(ASSETS))
MNLI_MT = get_task("mnli_mt")
# Integration points named in the task report: the option in config.py and the calls in pipeline.py;
# the squad_mt entry in tasks/span_qa.py.
HAS_LANGUAGES_OPTION = "languages" in {f.name for f in dataclasses.fields(TaskOptions)}
needs_option = pytest.mark.skipif(not HAS_LANGUAGES_OPTION, reason="needs TaskOptions.languages (task report)")
needs_squad_mt = pytest.mark.skipif("squad_mt" not in TASKS, reason="needs the squad_mt spec (task report)")


def opts(*langs, data_dir=None):
    return SimpleNamespace(languages=list(langs) or None, data_dir=data_dir)


def test_xnli_mt_reader_on_fixture():
    path = ASSETS / "xnli" / "XNLI-MT-1.0" / "multinli" / "multinli.train.de.tsv"
    records = READERS["xnli_mt_tsv"](path)
    assert len(records) == 30
    assert records[0] == {"id": "0", "text_a": "Der Bauer öffnete den Garten in der Küche.",
                          "text_b": "Der Bauer öffnete den Garten.", "label": "entailment"}
    # The files spell the third class "contradictory"; the reader maps it to MNLI's name.
    assert [r["label"] for r in records[:3]] == ["entailment", "neutral", "contradiction"]


def test_mnli_mt_spec():
    assert MNLI_MT.phases == ("intermediate",) and MNLI_MT.train_task == "mnli" and translated.applies(MNLI_MT)
    assert len(MNLI_MT.languages) == 15 and "en" in MNLI_MT.languages
    assert MNLI_MT.labels == get_task("mnli").labels
    assert MNLI_MT.files.splits == {"train": "XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv"}
    assert not translated.applies(get_task("mnli")) and not translated.applies(get_task("xnli"))


def test_languages_default_to_every_translation_without_english():
    assert translated.languages(MNLI_MT, None) == tuple(lang for lang in MNLI_MT.languages if lang != "en")
    assert translated.languages(MNLI_MT, opts()) == translated.languages(MNLI_MT, None)
    assert translated.languages(MNLI_MT, opts("en", "de")) == ("en", "de")


def test_language_problems_are_reported_together():
    problems = translated.option_problems(MNLI_MT, ["de", "xx", "de"])
    assert problems[0].startswith("'xx' has no translation (choose from ar, bg, de")
    assert "repeat a language" in problems[1]
    assert "has no translated training data" in translated.option_problems(get_task("mnli"), ["de"])[0]
    with pytest.raises(ValueError, match=r"mnli_mt: 'ja' has no translation"):
        translated.languages(MNLI_MT, opts("ja"))


def test_train_examples_concatenate_languages_with_prefixed_ids():
    examples = translated.train_examples(MNLI_MT, CFG, opts("de", "zh"))
    assert len(examples) == 60
    assert [ex["id"] for ex in examples[:2]] == ["de-0", "de-1"] and examples[30]["id"] == "zh-0"
    assert examples[30]["text_a"] == "飞行员在市场画了自行车。"
    assert len({ex["id"] for ex in examples}) == 60


def test_english_means_the_original_task():
    examples = translated.train_examples(MNLI_MT, CFG, opts("en", "de"))
    from stilts_xling.data import load_examples

    mnli = load_examples(get_task("mnli"), "train", "en", CFG)
    assert len(examples) == len(mnli) + 30
    assert examples[0] == {**mnli[0], "id": f"en-{mnli[0]['id']}"}
    assert examples[len(mnli)]["id"] == "de-0"


def test_missing_files_lists_each_language(tmp_path):
    from stilts_xling.config import IntermediateConfig
    from stilts_xling.pipeline import check_data

    chosen = opts("en", "de")
    # English comes from MNLI's own file (there is no English translation), German from XNLI-MT
    assert translated.train_needs(MNLI_MT, chosen) == [(get_task("mnli"), "train", "en", None),
                                                       (MNLI_MT, "train", "de", chosen)]

    def missing(data_dir, langs):
        cfg = ExperimentConfig(data_dir=str(data_dir), intermediate=IntermediateConfig(
            tasks=["mnli_mt"], task_options={"mnli_mt": TaskOptions(languages=list(langs))}))
        return [p for p in check_data(cfg, ("intermediate",)) if " train" in p.split(":")[0]]

    lines = missing(tmp_path, ["en", "de"])
    assert len(lines) == 2
    assert "multinli_1.0_train.jsonl" in lines[0]
    assert lines[1].startswith("mnli_mt train [de]: expected ") and "XNLI-MT-1.0.zip" in lines[1]
    assert missing(ASSETS, ["de", "zh"]) == []


def test_task_data_dir_option_points_at_the_translations(tmp_path):
    with pytest.raises(DataError, match=r"missing data file:\n.*multinli.train.de.tsv"):
        translated.train_examples(MNLI_MT, CFG, opts("de", data_dir=str(tmp_path)))


@needs_squad_mt
def test_squad_mt_reads_translate_train_files():
    spec = get_task("squad_mt")
    assert spec.family == "span_qa" and spec.train_task == "squad_v1" and translated.applies(spec)
    assert spec.files.splits["train"] == "translate-train/squad.translate.train.en-{lang}.json"
    examples = translated.train_examples(spec, CFG, opts("de", "zh"))
    assert len(examples) == 8
    assert examples[0]["id"] == "de-sq1-0001" and examples[4]["id"] == "zh-sq1-0001"
    assert examples[0]["answers"] == [{"text": "1902", "answer_start": 28}]
    assert examples[4]["context"][9:14] == "1902年"


# ------------------------------------------------------------------------------------------ end to end

@needs_option
def test_smoke_translated_trains_on_translations_and_selects_on_english(tmp_path, cli):
    run_dir = tmp_path / "run"
    result = cli("run", SMOKE_TRANSLATED, f"run_dir={run_dir}")
    assert result.exit_code == 0, result.output
    rows = read_rows(run_dir / "results.jsonl")
    (inter,) = [r for r in rows if r["phase"] == "intermediate"]
    assert (inter["task"], inter["language"], inter["split"], inter["intermediate"]) == ("mnli_mt", "en", "dev",
                                                                                        ["mnli_mt"])
    assert {r["language"] for r in rows if r["task"] == "xnli"} == {"en", "de", "zh"}


@needs_option
def test_smoke_translated_mixed_with_english_both_ways(tmp_path, cli):
    mixed = cli("train-intermediate", SMOKE_TRANSLATED, f"run_dir={tmp_path / 'mixed'}",
                "intermediate.task_options.mnli_mt.languages=[en,de,zh]")
    assert mixed.exit_code == 0, mixed.output
    multitask = cli("train-intermediate", SMOKE_TRANSLATED, f"run_dir={tmp_path / 'multi'}",
                    "intermediate.tasks=[mnli,mnli_mt]")
    assert multitask.exit_code == 0, multitask.output
    rows = read_rows(tmp_path / "multi" / "results.jsonl")
    assert {r["task"] for r in rows} == {"mnli", "mnli_mt"}


@needs_option
def test_unknown_translation_language_is_a_config_error(cli):
    result = cli("validate", SMOKE_TRANSLATED, "intermediate.task_options.mnli_mt.languages=[de,xx]")
    assert result.exit_code == 2 and "'xx' has no translation" in result.output


@needs_option
@needs_squad_mt
def test_smoke_translated_squad(tmp_path, cli):
    result = cli("train-intermediate", SMOKE_TRANSLATED, f"run_dir={tmp_path / 'run'}", "intermediate.tasks=[squad_mt]",
                 "intermediate.task_options={squad_mt: {languages: [de, zh]}}")
    assert result.exit_code == 0, result.output
    (row, *_) = [r for r in read_rows(tmp_path / "run" / "results.jsonl") if r["metric"] == "f1"]
    assert (row["task"], row["language"], row["split"]) == ("squad_mt", "en", "dev")  # English SQuAD dev
