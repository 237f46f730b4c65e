"""`stilts_xling.prepare` without network: what a config needs, the "missing" lists an offline run fails
with, fabricated caches that count as present, and skipping tiny: models and local directories."""
import json
import shutil

import datasets
import huggingface_hub
import pytest

from conftest import SMOKE
from stilts_xling.config import load_config
from stilts_xling.prepare import is_hub_id, needed_datasets, needed_models, offline_problems, prepare

HUB = ["data_source=hub", "xtreme.tasks=[xnli]", "xtreme.languages={xnli: [en, de]}", "xtreme.splits=[dev]"]


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point both HF caches at empty folders, so results never depend on this machine's caches."""
    hub, data = tmp_path / "hub", tmp_path / "datasets"
    hub.mkdir()
    data.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(data))
    return hub, data


def test_tiny_models_and_local_dirs_need_nothing(tmp_path, empty_caches):
    cfg = load_config(SMOKE)  # tiny:xlm-roberta, bundled tokenizer, original files under tests/assets
    assert needed_models(cfg) == []
    assert offline_problems(cfg) == [] and prepare(cfg) == []
    local = tmp_path / "encoder"
    local.mkdir()
    cfg = load_config(SMOKE, [f"model.name={local}", f"xtreme.encoder={local}"])
    assert needed_models(cfg) == []
    assert not is_hub_id("tiny:bert") and not is_hub_id(str(local)) and not is_hub_id("runs/mnli/intermediate/encoder")
    assert is_hub_id("xlm-roberta-large") and is_hub_id("FacebookAI/xlm-roberta-large")


def test_hub_models_and_datasets_are_listed(empty_caches):
    cfg = load_config(SMOKE, ["model.name=xlm-roberta-large", "xtreme.encoder=org/encoder", *HUB])
    assert needed_models(cfg) == [("model", "xlm-roberta-large"), ("tokenizer", "xlm-roberta-large"),
                                  ("model", "org/encoder"), ("tokenizer", "org/encoder")]
    items, no_source = needed_datasets(cfg)
    # mnli (intermediate train/dev, and XNLI's training data: listed once), then XNLI dev per language.
    assert items == [("nyu-mll/multi_nli", None, "train", None), ("nyu-mll/multi_nli", None, "validation_matched", None),
                     ("facebook/xnli", "en", "validation", None), ("facebook/xnli", "de", "validation", None)]
    # A repo whose main branch is a loading script is read at the revision holding its parquet files.
    items, _ = needed_datasets(load_config(SMOKE, ["data_source=hub", "intermediate.tasks=[hellaswag]", "xtreme.tasks=[]",
                                                "xtreme.languages={}"]))
    assert items == [("Rowan/hellaswag", None, "train", "refs/pr/7"), ("Rowan/hellaswag", None, "validation", "refs/pr/7")]
    assert no_source == []
    random = load_config(SMOKE, ["model.name=xlm-roberta-large", "model.random_init=true"])
    assert needed_models(random)[0] == ("config", "xlm-roberta-large")  # random weights: only config.json


def test_offline_problems_lists_everything_missing_at_once(empty_caches):
    cfg = load_config(SMOKE, ["model.name=xlm-roberta-large", *HUB])
    problems = offline_problems(cfg)
    assert len(problems) == 2 + 4  # model and tokenizer, four dataset splits
    assert problems[0].startswith("model xlm-roberta-large: config.json not in the HF cache")
    assert problems[1].startswith("tokenizer xlm-roberta-large:")
    assert all("stilts prepare" in p for p in problems)
    assert "facebook/xnli [de] split validation" in problems[-1]


def test_prepare_offline_reports_every_failure(empty_caches):
    cfg = load_config(SMOKE, ["model.name=org/not-cached", *HUB])
    problems = prepare(cfg)  # the tests run with HF_HUB_OFFLINE=1: nothing can be fetched
    assert len(problems) == 2 + 4 and all("could not fetch" in p for p in problems)
    assert all("\n" not in p for p in problems)  # one line each


def test_missing_original_files_are_problems(tmp_path, empty_caches):
    problems = offline_problems(load_config(SMOKE, [f"data_dir={tmp_path / 'nothing'}"]))
    assert problems and all("expected" in p for p in problems)


def _fake_model_cache(hub, repo, files):
    snapshot = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    for name in files:
        (snapshot / name).write_text("{}")


def _fake_dataset_cache(tmp_path, data, repo, config, splits):
    """A prepared dataset in the layout datasets' offline cache lookup reads (<org>___<name>/<config>/...)."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"a": 1}\n')
    builder = datasets.load_dataset_builder("json", data_files={s: str(rows) for s in splits},
                                            cache_dir=str(tmp_path / "build"))
    builder.download_and_prepare()
    target = data / repo.replace("/", "___") / config / "0.0.0" / "0123abcd"
    shutil.copytree(builder.cache_dir, target)
    info = json.loads((target / "dataset_info.json").read_text())
    (target / "dataset_info.json").write_text(json.dumps({**info, "config_name": config}))  # as a hub download


def test_cached_items_are_not_problems(tmp_path, empty_caches):
    hub, data = empty_caches
    _fake_model_cache(hub, "org/model", ["config.json", "model.safetensors", "tokenizer.json"])
    _fake_dataset_cache(tmp_path, data, "nyu-mll/multi_nli", "default", ["train"])  # no validation_matched
    _fake_dataset_cache(tmp_path, data, "facebook/xnli", "en", ["validation"])
    cfg = load_config(SMOKE, ["model.name=org/model", *HUB])
    problems = offline_problems(cfg)
    # Model, tokenizer, mnli train and xnli en are cached; mnli's dev split and xnli de are not.
    assert len(problems) == 2, json.dumps(problems, indent=1)
    assert "nyu-mll/multi_nli split validation_matched: cached without split(s) validation_matched" in problems[0]
    assert "facebook/xnli [de] split validation: not in the datasets cache" in problems[1]

    _fake_model_cache(hub, "org/weightless", ["config.json", "tokenizer.json"])
    cfg = load_config(SMOKE, ["model.name=org/weightless"])
    problems = offline_problems(cfg)  # config and tokenizer are there, no weights in any of the four formats
    assert len(problems) == 1
    assert problems[0].startswith("model org/weightless: model.safetensors or model.safetensors.index.json or "
                                  "pytorch_model.bin or pytorch_model.bin.index.json not in the HF cache")
