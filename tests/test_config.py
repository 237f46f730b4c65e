from pathlib import Path

import pytest
import yaml

from stilts_xling.config import ConfigError, load_config
from conftest import REPO, SMOKE


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path, overrides: list[str] = ()) -> ConfigError:
    """The error that loading the config raises."""
    with pytest.raises(ConfigError) as err:
        load_config(path, list(overrides))
    return err.value


def test_smoke_config_loads_with_types():
    cfg = load_config(SMOKE)
    assert cfg.model.name == "tiny:xlm-roberta"
    assert cfg.intermediate.tasks == ["mnli"]
    assert isinstance(cfg.intermediate.train.lr, float)


def test_three_unknown_top_level_keys_are_all_reported(tmp_path, cli):
    text = SMOKE.read_text() + "\nsead: 3\nbatchsize: 4\nfoo_bar: 1\n"
    result = cli("validate", write(tmp_path, text))
    assert result.exit_code == 2
    for key in ("sead", "batchsize", "foo_bar"):
        assert f"{key}: unknown key" in result.output
    assert "did you mean 'seed'" in result.output
    assert "3 problem(s)" in result.output


def test_wrong_types_and_values_name_the_key_path(tmp_path):
    err = refused(write(tmp_path, "intermediate:\n  tasks: mnli\n  train:\n    lr: fast\n    epochs: -1\n"
                                  "xtreme:\n  splits: [dev, valid]\nseed: one\n"))
    text = str(err)
    assert "intermediate.tasks: expected a list, got str 'mnli'" in text
    assert "intermediate.train.lr: expected a number, got str 'fast'" in text
    assert "xtreme.splits[1]: 'valid' is not one of 'dev', 'test'" in text
    assert "seed: expected an integer" in text
    # value checks run beside the type checks (every problem at once); a wrongly typed value is
    # reported once, not again by a value check over it
    assert "intermediate.train.epochs: must be positive, got -1.0" in text
    assert len(err.problems) == 5


def test_type_and_value_problems_in_one_report_without_doubles(tmp_path):
    err = refused(write(tmp_path, "intermediate:\n  tasks: [mnli, xnli, mnli]\n"
                                  "  train: {batch_size: '32', warmup: 2.0}\n"
                                  "speed: {attention: flashy, workers: -2}\nmodel: {dropout: 1.5}\n"))
    assert sorted(err.problems) == sorted([
        "intermediate.tasks[1]: 'xnli' is not a task of the intermediate phase (it belongs to: xtreme)",
        "intermediate.tasks[2]: 'mnli' is listed twice (also at intermediate.tasks[0]); list it once "
        "(intermediate.sampler sets how often a task is drawn)",
        "intermediate.train.batch_size: expected an integer, got str '32'",
        "intermediate.train.warmup: a fraction of the steps in [0, 1), got 2.0",
        "speed.attention: 'flashy' is not one of 'flash', 'cudnn' (did you mean 'flash'?)",
        "speed.workers: must be 0 or more, got -2",
        "model.dropout: a probability in [0, 1), got 1.5",
    ])


def test_a_mistyped_task_list_does_not_make_its_options_unknown(tmp_path):
    err = refused(write(tmp_path, "intermediate:\n  tasks: mnli\n  task_options: {mnli: {max_train_examples: 0}}\n"))
    assert err.problems == ["intermediate.tasks: expected a list, got str 'mnli'",
                                  "intermediate.task_options.mnli.max_train_examples: must be at least 1, got 0"]


def test_semantic_checks_unknown_task_language_and_value(tmp_path):
    err = refused(write(tmp_path, "intermediate:\n  tasks: [mnlii]\n  train: {epochs: 0, warmup: 1.5}\n"
                                  "xtreme:\n  tasks: [xnli, mnli]\n  languages: {xnli: [en, xx]}\n"
                                  "model: {name: 'tiny:xlm-robertaa'}\n"))
    text = str(err)
    assert "intermediate.tasks[0]: unknown task 'mnlii'; did you mean 'mnli'?" in text
    assert "xtreme.tasks[1]: 'mnli' is not a task of the xtreme phase" in text
    assert "xtreme.languages.xnli: 'xx' is not a xnli language" in text
    assert "intermediate.train.epochs: must be positive" in text
    assert "intermediate.train.warmup" in text
    assert "unknown tiny architecture 'xlm-robertaa'" in text


def test_numbers_that_would_fail_at_run_time_are_config_errors():
    err = refused(SMOKE, ["intermediate.train.epochs=.inf", "intermediate.train.patience=-1",
                          "intermediate.train.max_length=3", "intermediate.train.eval_subset=-3",
                          "intermediate.sampler={kind: temperature, temperature: 0}",
                          "intermediate.task_options={mnli: {max_train_examples: 0}}"])
    text = str(err)
    assert "6 problem(s)" in text
    for line in ("intermediate.train.epochs: must be a finite number, got inf",
                 "intermediate.train.patience: must be 0 or more, got -1",
                 "intermediate.train.max_length: 3 tokens leave no room",
                 "intermediate.train.eval_subset: must be 0 or more, got -3",
                 "intermediate.sampler.temperature: must be a positive number, got 0",
                 "intermediate.task_options.mnli.max_train_examples: must be at least 1, got 0"):
        assert line in text


def test_malformed_yaml_names_the_line(tmp_path):
    err = refused(write(tmp_path, "seed: 1\nmodel:\n  name: [unclosed\nrun_dir: x\n"))
    assert "malformed YAML at line" in str(err)
    assert str(tmp_path / "c.yaml") in str(err)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = write(tmp_path, "seed: 1\nxtreme:\n  tasks: [xnli]\n  splits: [dev]\n  tasks: [pawsx]\n")
    with pytest.raises(ConfigError, match=r"line 5, .*key 'tasks' appears twice in one mapping \(first at line 3\)"):
        load_config(path)


def test_overrides_apply_and_are_checked():
    cfg = load_config(SMOKE, ["seed=7", "intermediate.train.lr=2e-5", "xtreme.tasks=[xnli]"])
    assert cfg.seed == 7 and cfg.intermediate.train.lr == 2e-5
    err = refused(SMOKE, ["intermediate.trian.lr=1"])
    assert "intermediate.trian: unknown key (did you mean 'train'?)" in str(err)
    with pytest.raises(ConfigError):
        load_config(SMOKE, ["seed"])


def test_distributed_strategy_is_checked_with_the_speed_options_fsdp_cannot_run():
    assert load_config(SMOKE).distributed.strategy == "auto"
    assert load_config(SMOKE, ["distributed.strategy=fsdp", "speed.unpadded=true"]).distributed.strategy == "fsdp"
    err = refused(SMOKE, ["distributed.strategy=fsdb", "distributed.stratgy=ddp"])
    assert "distributed.strategy: 'fsdb' is not one of 'auto', 'ddp', 'fsdp' (did you mean 'fsdp'?)" in str(err)
    assert "distributed.stratgy: unknown key (did you mean 'strategy'?)" in str(err)
    err = refused(SMOKE, ["distributed.strategy=fsdp", "speed.unpadded=true", "speed.cuda_graphs=true",
                          "speed.compile=true", "speed.token_budget=4096", "speed.flat_adamw=true"])
    assert len(err.problems) == 4
    for key, default in [("cuda_graphs", "false"), ("compile", "false"), ("token_budget", "null"),
                         ("flat_adamw", "false")]:
        assert f"speed.{key}: cannot be combined with FSDP" in str(err)
        assert f"set speed.{key}: {default}" in str(err)
    assert load_config(SMOKE, ["distributed.strategy=ddp", "speed.compile=true"]).speed.compile  # DDP: fine


def test_missing_config_file(tmp_path, cli):
    result = cli("validate", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "config file not found" in result.output


EXPERIMENT_CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "sweeps" not in p.parts)


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_is_valid(path):
    load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), "each shipped config starts with a comment giving its command"
    assert "stilts " in "\n".join(path.read_text().splitlines()[:4])
    assert isinstance(yaml.safe_load(path.read_text()), dict)


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_other_architecture_smoke_configs_run(tmp_path, cli, name):
    from stilts_xling.results import read_rows

    result = cli("run", REPO / "configs" / "smoke" / f"{name}.yaml", f"run_dir={tmp_path / name}",
                 "intermediate.train.max_steps=4", "xtreme.train.max_steps=4")
    assert result.exit_code == 0, result.output
    rows = read_rows(tmp_path / name / "results.jsonl")
    assert {r["language"] for r in rows if r["task"] == "xnli"} == {"en", "de"}
    assert all(r["model"] == f"tiny:{name}" for r in rows)
