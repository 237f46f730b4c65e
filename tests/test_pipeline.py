"""End to end through the real CLI on the tiny model and the bundled fixtures."""
import json

import pytest

from conftest import SMOKE
from stilts_xling.results import read_rows


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from conftest import run_cli

    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = run_cli("run", SMOKE, f"run_dir={run_dir}")
    assert result.exit_code == 0, result.output
    return run_dir, result


def test_run_writes_xnli_rows_for_every_fixture_language(smoke_run):
    run_dir, result = smoke_run
    rows = read_rows(run_dir / "results.jsonl")
    xnli = [r for r in rows if r["task"] == "xnli" and r["metric"] == "accuracy"]
    assert {(r["language"], r["split"]) for r in xnli} == {(lang, split) for lang in ("en", "de", "ar", "zh")
                                                           for split in ("dev", "test")}
    for row in xnli:
        assert row["seed"] == 1 and len(row["config_hash"]) == 12
        assert {"torch", "transformers", "stilts_xling"} <= set(row["versions"])
        assert row["encoder"] == str(run_dir / "intermediate" / "encoder")
        assert 0 <= row["value"] <= 100
    assert (run_dir / "config.yaml").read_text().startswith("run_dir:")
    assert "| en | de | ar | zh | avg |" in result.output


def test_intermediate_training_learns(smoke_run):
    """The MNLI fixture's label is learnable (cue words); chance is 33.3%."""
    run_dir, _ = smoke_run
    rows = read_rows(run_dir / "results.jsonl")
    (mnli,) = [r for r in rows if r["phase"] == "intermediate" and r["task"] == "mnli"]
    assert mnli["value"] >= 80.0
    en = [r for r in rows if r["task"] == "xnli" and r["language"] == "en" and r["split"] == "dev"]
    assert en[0]["value"] >= 80.0  # same cue words in the English XNLI fixture


def test_saved_encoder_loads_with_automodel(smoke_run):
    from transformers import AutoModel, AutoTokenizer

    run_dir, _ = smoke_run
    enc = run_dir / "intermediate" / "encoder"
    model = AutoModel.from_pretrained(enc)
    tok = AutoTokenizer.from_pretrained(enc)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert not any(k.startswith("heads") for k in model.state_dict())  # the encoder alone, no task heads
    assert len(tok) == model.config.vocab_size


def test_rerun_skips_finished_work(smoke_run, cli):
    run_dir, _ = smoke_run
    before = (run_dir / "results.jsonl").read_text()
    result = cli("run", SMOKE, f"run_dir={run_dir}")
    assert result.exit_code == 0
    assert "skipping" in result.output
    assert (run_dir / "results.jsonl").read_text() == before


def test_hand_off_between_separate_commands(tmp_path, cli):
    run_dir = tmp_path / "run"
    over = [f"run_dir={run_dir}", "intermediate.train.max_steps=5", "xtreme.train.max_steps=5",
            "xtreme.languages={xnli: [en, de]}", "xtreme.splits=[dev]"]
    result = cli("eval-xtreme", SMOKE, *over)
    assert result.exit_code == 2 and "run `stilts train-intermediate CONFIG` first" in result.output
    assert cli("train-intermediate", SMOKE, *over).exit_code == 0
    encoder = run_dir / "intermediate" / "encoder"
    assert (encoder / "config.json").is_file()
    assert cli("eval-xtreme", SMOKE, *over).exit_code == 0
    rows = [r for r in read_rows(run_dir / "results.jsonl") if r["phase"] == "xtreme"]
    assert {r["language"] for r in rows} == {"en", "de"}
    assert all(r["encoder"] == str(encoder) for r in rows)
    # The baseline: the same targets on the raw model, selected by xtreme.encoder.
    result = cli("eval-xtreme", SMOKE, *over, f"run_dir={tmp_path / 'base'}", "intermediate.tasks=[]")
    assert result.exit_code == 0
    base = read_rows(tmp_path / "base" / "results.jsonl")
    assert base and all(r["encoder"] == "tiny:xlm-roberta" for r in base)


def test_target_fine_tuning_ignores_the_intermediate_sampler_cap(tmp_path, cli, monkeypatch):
    # A capped multi-task sampler (cap 2) cut each target epoch to 2 examples, and the schedule with it.
    from stilts_xling import pipeline

    seen = []
    real = pipeline.train

    def spy(model, tasks, hp, sampler, *args, **kwargs):
        seen.append((kwargs["desc"], sampler.kind, sampler.cap))
        return real(model, tasks, hp, sampler, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train", spy)
    over = [f"run_dir={tmp_path / 'run'}", "intermediate.train.max_steps=2", "xtreme.languages={xnli: [en]}",
            "xtreme.splits=[dev]", "intermediate.sampler.kind=capped", "intermediate.sampler.cap=2"]
    assert cli("run", SMOKE, *over).exit_code == 0
    assert [s for s in seen if s[0].startswith("xtreme")] == [("xtreme xnli", "proportional", None)]
    assert any(s[1:] == ("capped", 2) for s in seen if not s[0].startswith("xtreme"))


def test_missing_data_is_reported_with_path_and_fix(tmp_path, cli):
    result = cli("run", SMOKE, f"run_dir={tmp_path / 'r'}", f"data_dir={tmp_path / 'nodata'}")
    assert result.exit_code == 2
    assert "multinli_1.0_train.jsonl" in result.output and "multinli_1.0.zip" in result.output
    assert "xnli.dev.tsv" in result.output
    # each download hint once, under the files it brings (train and dev of MNLI share one zip)
    assert result.output.count("multinli_1.0.zip") == 1
    assert f"  mnli dev: expected {tmp_path / 'nodata'}/mnli/multinli_1.0/multinli_1.0_dev_matched.jsonl\n" \
           f"    -> download https://cims.nyu.edu/~sbowman/multinli/multinli_1.0.zip" in result.output
    assert not (tmp_path / "r").exists()  # nothing started


def test_validate_and_tasks(cli):
    assert cli("validate", SMOKE).exit_code == 0
    out = cli("tasks").output
    assert "mnli" in out and "xnli" in out and "classification" in out


def test_help_lists_commands(cli):
    out = cli("--help").output
    assert "train-intermediate" in out and "eval-xtreme" in out
    assert "Example:" in cli("run", "--help").output


def test_smoke_intermediate_all_nine_tasks(tmp_path, cli):
    """configs/smoke/intermediate_all.yaml: one multi-task run over all nine, a dev row for each, one encoder."""
    from conftest import REPO

    run_dir = tmp_path / "all"
    result = cli("train-intermediate", REPO / "configs" / "smoke" / "intermediate_all.yaml", f"run_dir={run_dir}",
                 "intermediate.train.max_steps=18", "intermediate.train.eval_every=9")
    assert result.exit_code == 0, result.output
    rows = read_rows(run_dir / "results.jsonl")
    nine = {"anli", "mnli", "qqp", "squad_v1", "squad_v2", "hellaswag", "commonsenseqa", "cosmosqa", "ccg"}
    assert {r["task"] for r in rows if r["phase"] == "intermediate"} == nine
    assert (run_dir / "intermediate" / "encoder" / "config.json").is_file()
    history = json.loads((run_dir / "intermediate" / "history.json").read_text())
    assert any(k.startswith("loss/") for entry in history for k in entry)  # per-task losses are logged


def test_smoke_xtreme_all_seven_targets(tmp_path, cli):
    from conftest import REPO

    run_dir = tmp_path / "x"
    result = cli("eval-xtreme", REPO / "configs" / "smoke" / "xtreme_all.yaml", f"run_dir={run_dir}",
                 "xtreme.train.max_steps=4", "xtreme.train.eval_every=4")
    assert result.exit_code == 0, result.output
    rows = read_rows(run_dir / "results.jsonl")
    langs = {}
    for r in rows:
        langs.setdefault(r["task"], set()).add(r["language"])
    assert set(langs) == {"xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa"}
    assert all(len(v) >= 2 for v in langs.values())
    assert (run_dir / "predictions" / "mlqa" / "test-zh.json").is_file()  # XTREME submission layout
    assert (run_dir / "predictions" / "udpos" / "test-de.tsv").is_file()


def test_tensorboard_scalars_are_logged(smoke_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = smoke_run
    events = EventAccumulator(str(run_dir / "tensorboard" / "intermediate"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/mnli", "lr", "throughput/examples_per_s", "dev/score", "dev/mnli/accuracy"} <= tags
    final = events.Scalars("dev/mnli/accuracy")[-1]
    assert 0 <= final.value <= 100 and final.step > 0
