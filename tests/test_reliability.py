"""Faults a long GPU job meets, injected one by one: each gives a clear message and loses nothing."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ASSETS, REPO, SMOKE
from stilts_xling import checkpoint, files
from stilts_xling.config import load_config
from stilts_xling.files import describe, write_atomic
from stilts_xling.cache import cache_key
from stilts_xling.results import append_rows, read_rows, unrecorded
from stilts_xling.tasks.registry import family_of, get_task

QUICK = ["intermediate.train.max_steps=6", "xtreme.train.max_steps=6", "xtreme.languages={xnli: [en, de]}",
         "xtreme.splits=[dev]"]


def edit_line(path: Path, index: int, change) -> None:
    """Rewrite line `index` (0-based) of `path` as change(line)."""
    lines = path.read_text().splitlines()
    lines[index] = change(lines[index])
    path.write_text("\n".join(lines) + "\n")


def copy_assets(tmp_path: Path, *names: str) -> Path:
    root = tmp_path / "data"
    for name in names:
        shutil.copytree(ASSETS / name, root / name)
    return root


def test_corrupt_line_names_file_and_line_and_keeps_results(tmp_path, cli):
    run_dir = tmp_path / "run"
    assert cli("run", SMOKE, f"run_dir={run_dir}", *QUICK).exit_code == 0
    before = (run_dir / "results.jsonl").read_text()
    data = copy_assets(tmp_path, "mnli", "xnli")
    train = data / "mnli" / "multinli_1.0" / "multinli_1.0_train.jsonl"
    edit_line(train, 6, lambda line: line[:40])  # a torn JSON line
    result = cli("run", SMOKE, f"run_dir={tmp_path / 'run2'}", f"data_dir={data}", *QUICK)
    assert result.exit_code == 2
    assert f"{train}:7:" in result.output
    assert (run_dir / "results.jsonl").read_text() == before


def test_validate_read_data_lists_every_malformed_and_missing_file_at_once(tmp_path, cli):
    data = copy_assets(tmp_path, "mnli", "xnli")
    train = data / "mnli" / "multinli_1.0" / "multinli_1.0_train.jsonl"
    edit_line(train, 6, lambda line: line[:40])  # a torn JSON line
    dev = data / "xnli" / "XNLI-1.0" / "xnli.dev.tsv"
    edit_line(dev, 2, lambda row: re.sub(r"\t(contradiction|entailment|neutral)\t", "\tmaybe\t", row))
    (data / "mnli" / "multinli_1.0" / "multinli_1.0_dev_matched.jsonl").unlink()
    over = [f"data_dir={data}", "xtreme.splits=[dev]"]
    result = cli("validate", SMOKE, *over, "--read-data", "--strict")
    assert result.exit_code == 1
    assert "error: 1 data file(s) missing" in result.output and "multinli_1.0_dev_matched.jsonl" in result.output
    assert "error: 2 data file(s) unreadable" in result.output
    assert f"{train}:7: invalid JSON" in result.output and f"{dev}:3: label 'maybe'" in result.output
    assert cli("validate", SMOKE, *over).exit_code == 0  # without --read-data nothing is parsed


def test_label_outside_the_label_set(tmp_path, cli):
    data = copy_assets(tmp_path, "mnli", "xnli")
    train = data / "mnli" / "multinli_1.0" / "multinli_1.0_train.jsonl"
    edit_line(train, 2, lambda line: json.dumps({**json.loads(line), "gold_label": "entails"}))
    result = cli("train-intermediate", SMOKE, f"run_dir={tmp_path / 'r'}", f"data_dir={data}", *QUICK)
    assert result.exit_code == 2 and f"{train}:3:" in result.output and "entails" in result.output


def test_empty_split_is_an_error(tmp_path, cli):
    data = copy_assets(tmp_path, "mnli", "xnli")
    (data / "mnli" / "multinli_1.0" / "multinli_1.0_dev_matched.jsonl").write_text("")
    result = cli("train-intermediate", SMOKE, f"run_dir={tmp_path / 'r'}", f"data_dir={data}", *QUICK)
    assert result.exit_code == 2 and "multinli_1.0_dev_matched.jsonl" in result.output


def test_missing_or_partial_encoder(tmp_path, cli):
    result = cli("eval-xtreme", SMOKE, f"run_dir={tmp_path / 'r'}", f"xtreme.encoder={tmp_path / 'nope'}", *QUICK)
    assert result.exit_code == 2 and "does not exist" in result.output
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    result = cli("eval-xtreme", SMOKE, f"run_dir={tmp_path / 'r'}", f"xtreme.encoder={partial}", *QUICK)
    assert result.exit_code == 2 and "incomplete" in result.output and "model weights" in result.output


def test_tokenizer_that_does_not_match_the_model():
    from stilts_xling.model import check_vocab

    class Tok:
        def __len__(self):
            return 5000

    model = torch.nn.Module()
    model.get_input_embeddings = lambda: torch.nn.Embedding(1000, 4)
    with pytest.raises(ValueError, match="do not belong together"):
        check_vocab(model, Tok(), "some-model")


def test_changed_config_refuses_with_a_diff_then_new_run_archives(tmp_path, cli):
    run_dir = tmp_path / "run"
    assert cli("run", SMOKE, f"run_dir={run_dir}", *QUICK).exit_code == 0
    before = (run_dir / "results.jsonl").read_text()
    # The same run dir spelled with a trailing slash is the same run: it resumes (nothing left to do).
    assert cli("run", SMOKE, f"run_dir={run_dir}/", *QUICK).exit_code == 0
    assert (run_dir / "results.jsonl").read_text() == before
    result = cli("run", SMOKE, f"run_dir={run_dir}", *QUICK, "seed=2")
    assert result.exit_code == 2
    assert "-seed: 1" in result.output and "+seed: 2" in result.output and "--new-run" in result.output
    assert (run_dir / "results.jsonl").read_text() == before
    assert cli("run", SMOKE, f"run_dir={run_dir}", *QUICK, "seed=2", "--new-run").exit_code == 0
    (archived,) = (run_dir / "archive").iterdir()
    assert (archived / "results.jsonl").read_text() == before  # the old run, intact
    assert {r["seed"] for r in read_rows(run_dir / "results.jsonl")} == {2}


def test_two_archives_in_the_same_second_keep_both_runs(tmp_path, monkeypatch):
    from stilts_xling import rundir

    monkeypatch.setattr(rundir.time, "strftime", lambda fmt: "20261204-120000")
    for n in (1, 2):
        (tmp_path / "results.jsonl").write_text(f"run {n}\n")
        rundir._archive(tmp_path)
    archive = tmp_path / "archive"
    assert sorted(os.listdir(archive)) == ["20261204-120000", "20261204-120000-2"]
    assert (archive / "20261204-120000-2" / "results.jsonl").read_text() == "run 2\n"


def test_a_config_saved_before_new_keys_existed_is_the_same_run(tmp_path, cli):
    """A newer version adds keys at their defaults: the old run dir resumes (same config hash, finished
    results skipped) instead of asking for --new-run; a real change still refuses."""
    import yaml

    from stilts_xling.config import config_hash, load_config

    run_dir = tmp_path / "run"
    assert cli("run", SMOKE, f"run_dir={run_dir}", *QUICK).exit_code == 0
    saved = run_dir / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["distributed"], old["xtreme"]["benchmark"]  # as written before these keys existed
    saved.write_text(yaml.safe_dump(old, sort_keys=False))
    rows = (run_dir / "results.jsonl").read_text()
    again = cli("run", SMOKE, f"run_dir={run_dir}", *QUICK)
    assert again.exit_code == 0, again.output
    assert (run_dir / "results.jsonl").read_text() == rows  # everything was already there
    assert not (run_dir / "archive").exists() and "distributed" in yaml.safe_load(saved.read_text())
    assert config_hash(load_config(SMOKE, [f"run_dir={run_dir}", *QUICK])) == read_rows(run_dir / "results.jsonl")[0]["config_hash"]
    old["seed"] = 5  # not a default-valued difference
    saved.write_text(yaml.safe_dump(old, sort_keys=False))
    assert cli("run", SMOKE, f"run_dir={run_dir}", *QUICK).exit_code == 2


def test_a_run_dir_is_locked_against_a_second_run(tmp_path):
    from stilts_xling.config import load_config
    from stilts_xling.rundir import start

    cfg = load_config(SMOKE, [f"run_dir={tmp_path / 'run'}"])
    first = start(cfg)
    try:
        code = ("import sys; from stilts_xling.config import load_config; from stilts_xling.rundir import start\n"
                f"start(load_config({str(SMOKE)!r}, ['run_dir={tmp_path / 'run'}']))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode != 0 and "is in use by pid" in out.stderr
    finally:
        first.close()


class FullDisk:
    """A file that takes `room` bytes and then fails as a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "state.pt"
    checkpoint.save(path, {"step": 1})
    # torch's zip writer reports a failed write as RuntimeError("unexpected pos ..."), not as the OSError
    monkeypatch.setattr(checkpoint, "open", lambda *a, **k: FullDisk(open(*a, **k), 600), raising=False)
    with pytest.raises(checkpoint.CheckpointError, match="the disk is full; the previous checkpoint .* is intact"):
        checkpoint.save(path, {"step": 2, "weights": torch.zeros(10_000)})
    monkeypatch.undo()
    assert checkpoint.load(path) == {"step": 1}
    assert os.listdir(path.parent) == ["state.pt"]  # no temp file left filling the disk


def test_disk_full_while_writing_an_output_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "run" / "config.yaml"
    write_atomic(path, "seed: 1\n")
    monkeypatch.setattr(files, "open", lambda *a, **k: FullDisk(open(*a, **k), 3), raising=False)
    with pytest.raises(OSError) as err:
        write_atomic(path, "seed: 2\n")
    monkeypatch.undo()
    assert err.value.filename == str(path)
    assert describe(err.value) == (f"the disk is full while writing {path}; free space and rerun the same command: "
                                   "finished work (results.jsonl, checkpoints) is kept")
    assert path.read_text() == "seed: 1\n" and os.listdir(path.parent) == ["config.yaml"]


def test_disk_full_while_saving_the_encoder_keeps_the_old_one_and_no_half(tmp_path, monkeypatch):
    from stilts_xling.model import load_tokenizer, save_encoder, tokenizer_source

    tokenizer = load_tokenizer(tokenizer_source(load_config(SMOKE).model))
    out = tmp_path / "encoder"
    out.mkdir()
    (out / "old").write_text("kept")

    class Encoder:
        def save_pretrained(self, where, state_dict=None):
            Path(where).mkdir()
            (Path(where) / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        save_encoder(Encoder(), tokenizer, out)
    assert "the disk is full while writing " + str(out) in describe(err.value)
    assert sorted(os.listdir(tmp_path)) == ["encoder"] and (out / "old").read_text() == "kept"


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable.*delete it"):
        checkpoint.load(path)
    assert checkpoint.load(tmp_path / "none.pt") is None


def test_disk_full_while_appending_results_leaves_earlier_rows(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    append_rows(path, [{"a": 1}])
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        append_rows(path, [{"a": 2}])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert read_rows(path)[0] == {"a": 1}


def test_a_row_after_a_torn_last_line_is_kept(tmp_path):
    path = tmp_path / "results.jsonl"
    append_rows(path, [{"a": 1}, {"a": 2}])
    path.write_bytes(path.read_bytes()[:-4])  # a crash mid-write: '{"a": ' without its end
    append_rows(path, [{"a": 3}])
    assert read_rows(path) == [{"a": 1}, {"a": 3}]


def test_rows_already_recorded_are_not_written_twice(tmp_path, cli):
    # Killed after the intermediate rows were written but before done.json: the rerun wrote them again.
    run_dir = tmp_path / "run"
    over = [f"run_dir={run_dir}", "intermediate.train.max_steps=2", "xtreme.tasks=[]", "xtreme.languages={}"]
    assert cli("train-intermediate", SMOKE, *over).exit_code == 0
    first = read_rows(run_dir / "results.jsonl")
    (run_dir / "intermediate" / "done.json").unlink()
    assert cli("train-intermediate", SMOKE, *over).exit_code == 0
    assert len(read_rows(run_dir / "results.jsonl")) == len(first) > 0
    row = {**first[0], "value": -1.0, "timestamp": "later"}
    assert unrecorded(run_dir / "results.jsonl", [row, {**row, "seed": 99}]) == [{**row, "seed": 99}]


def test_feature_cache_key_changes_with_everything_it_depends_on():
    from stilts_xling.model import TINY_TOKENIZER, load_tokenizer

    tok = load_tokenizer(str(TINY_TOKENIZER))
    spec = get_task("mnli")
    fam = family_of(spec)
    examples = [{"id": "1", "text_a": "a b", "text_b": "c", "label": "neutral"}]
    base = cache_key(spec, fam, examples, tok, 64)
    assert cache_key(spec, fam, examples, tok, 64) == base
    assert cache_key(spec, fam, examples, tok, 128) != base
    assert cache_key(spec, fam, [{**examples[0], "label": "entailment"}], tok, 64) != base
    assert cache_key(get_task("xnli"), fam, examples, tok, 64) != base
    tok.add_tokens(["brandnewtoken"])
    assert cache_key(spec, fam, examples, tok, 64) != base


# ---------------------------------------------------------------------------------------------------
# Kill and resume: the smoke run killed mid-training finishes with exactly the uninterrupted metrics.


def _metrics(run_dir: Path) -> dict:
    return {(r["phase"], r["task"], r["language"], r["split"], r["metric"]): r["value"]
            for r in read_rows(run_dir / "results.jsonl")}


def _start(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "stilts_xling.cli", "run", str(SMOKE), f"run_dir={run_dir}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared:\n{proc.stdout.read()}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from conftest import run_cli

    run_dir = tmp_path_factory.mktemp("whole") / "run"
    assert run_cli("run", SMOKE, f"run_dir={run_dir}").exit_code == 0
    return _metrics(run_dir)


@pytest.mark.parametrize("phase_dir", ["intermediate", "xtreme/xnli"])
def test_sigkill_mid_training_then_rerun_gives_the_same_results(tmp_path, cli, uninterrupted, phase_dir):
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_for(run_dir / phase_dir / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    result = cli("run", SMOKE, f"run_dir={run_dir}")
    assert result.exit_code == 0, result.output
    assert _metrics(run_dir) == uninterrupted  # bit-identical on CPU
    assert not (run_dir / phase_dir / "checkpoint.pt").exists()  # removed once the phase is complete


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, cli, uninterrupted):
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_for(run_dir / "intermediate" / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out
    assert "rerun the same command to resume" in out
    assert (run_dir / "intermediate" / "checkpoint.pt").exists()
    assert cli("run", SMOKE, f"run_dir={run_dir}").exit_code == 0
    assert _metrics(run_dir) == uninterrupted


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, cli, monkeypatch):
    from stilts_xling.tasks.classification import ClassificationFamily

    real = ClassificationFamily.forward
    calls = {"n": 0}

    def poisoned(self, head, hidden, pooled, batch):
        loss, logits = real(self, head, hidden, pooled, batch)
        if loss is not None and head.training:
            calls["n"] += 1
            if calls["n"] == 30:  # the 30th training micro batch = step 30 (no accumulation)
                loss = loss * float("nan")
        return loss, logits

    monkeypatch.setattr(ClassificationFamily, "forward", poisoned)
    run_dir = tmp_path / "run"
    result = cli("train-intermediate", SMOKE, f"run_dir={run_dir}")
    assert result.exit_code == 3
    assert "became NaN/inf at step 30" in result.output
    state = checkpoint.load(run_dir / "intermediate" / "checkpoint.pt")
    assert state["step"] == 20  # the evaluation checkpoint before the bad step
    assert not (run_dir / "intermediate" / "done.json").exists()


def test_offline_run_lacking_things_fails_at_once_with_the_full_list(tmp_path, cli):
    result = cli("run", SMOKE, f"run_dir={tmp_path / 'r'}", "model.name=xlm-roberta-large",
                 f"data_dir={tmp_path / 'nodata'}")  # smoke.yaml is offline: true
    assert result.exit_code == 2
    assert "model xlm-roberta-large" in result.output and "tokenizer xlm-roberta-large" in result.output
    assert "multinli_1.0_train.jsonl" in result.output and "xnli.dev.tsv" in result.output
    assert not (tmp_path / "r").exists()
