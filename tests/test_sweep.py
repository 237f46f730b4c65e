"""`stilts_xling.sweep`: grid expansion and names, validation of every cell up front, a real local sweep
of the smoke config (2 intermediate tasks x 2 seeds) that a rerun skips, and Slurm scripts."""
import json

import pytest
import yaml

from conftest import REPO, SMOKE
from stilts_xling.config import ConfigError, load_config
from stilts_xling.sweep import cell_names, expand_grid, run_sweep

QUICK = ["intermediate.train.max_steps=3", "xtreme.train.max_steps=3", "xtreme.languages={xnli: [en, de]}",
         "xtreme.splits=[dev]"]


def test_expand_grid_is_the_cartesian_product_in_key_order():
    grid = {"intermediate.tasks": [["mnli"], ["squad_v1"]], "seed": [1, 2],
            "xtreme.train.lr": [1e-5]}
    cells = expand_grid(grid)
    # 2 x 2 x 1 = 4 cells, the last key varying fastest
    assert cells == [
        {"intermediate.tasks": ["mnli"], "seed": 1, "xtreme.train.lr": 1e-5},
        {"intermediate.tasks": ["mnli"], "seed": 2, "xtreme.train.lr": 1e-5},
        {"intermediate.tasks": ["squad_v1"], "seed": 1, "xtreme.train.lr": 1e-5},
        {"intermediate.tasks": ["squad_v1"], "seed": 2, "xtreme.train.lr": 1e-5},
    ]
    # Only varying keys are named (lr is the same everywhere); "tasks" is intermediate.tasks' last part.
    assert cell_names(cells) == ["tasks=mnli,seed=1", "tasks=mnli,seed=2", "tasks=squad_v1,seed=1",
                                 "tasks=squad_v1,seed=2"]


def test_cell_names_disambiguate_keys_and_spell_lists():
    # Two varying keys ending in "lr" keep their full names; a key that does not vary is not named.
    cells = expand_grid({"intermediate.train.lr": [1e-5, 2e-5], "xtreme.train.lr": [3e-5, 4e-5], "seed": [7]})
    assert cell_names(cells) == [
        "intermediate.train.lr=1e-05,xtreme.train.lr=3e-05", "intermediate.train.lr=1e-05,xtreme.train.lr=4e-05",
        "intermediate.train.lr=2e-05,xtreme.train.lr=3e-05", "intermediate.train.lr=2e-05,xtreme.train.lr=4e-05"]
    # Lists join with "+"; the empty list (the baseline) is "none".
    assert cell_names(expand_grid({"intermediate.tasks": [[], ["mnli", "squad_v1"]]})) == \
        ["tasks=none", "tasks=mnli+squad_v1"]
    # A single cell varies nothing.
    assert cell_names(expand_grid({"seed": [1]})) == ["default"]


def test_grid_values_must_be_lists():
    with pytest.raises(ConfigError) as err:
        expand_grid({"seed": 1, "run_dir": ["x"], "intermediate.tasks": []})
    problems = err.value.problems  # all three at once: seed not a list, an empty list, run_dir set by the sweep
    assert [p.split(":")[0] for p in problems] == ["seed", "intermediate.tasks", "run_dir"]


def test_every_cell_is_validated_before_anything_runs(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"intermediate.tasks": [["mnli"], ["anli"]],
                                    "intermediate.task_options.mnli.max_train_examples": [10, 20],
                                    "xtreme.languages": [{"xnli": ["en", "xx"]}]}, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        run_sweep(SMOKE, grid, [f"run_dir={tmp_path / 'sweep'}"])
    problems = err.value.problems
    # All 4 cells ask for language xx; the 2 anli cells also set options for mnli, which they do not train.
    assert len(problems) == 4 + 2
    assert sum("'xx' is not a xnli language" in p for p in problems) == 4
    assert [p.split(":")[0] for p in problems if "not among the configured tasks" in p] == \
        ["cell tasks=anli,max_train_examples=10", "cell tasks=anli,max_train_examples=20"]
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow  # 4 real runs of the smoke pipeline, ~8 s each on 2 idle CPU cores
def test_local_sweep_runs_every_cell_then_skips_them(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"intermediate.tasks": [["mnli"], ["anli"]], "seed": [1, 2]}))
    base = tmp_path / "sweep"
    cells = run_sweep(SMOKE, grid, [*QUICK, f"run_dir={base}"], gpus=[])
    assert [c["status"] for c in cells] == ["done"] * 4, [c["status"] for c in cells]
    for cell, (task, seed) in zip(cells, [("mnli", 1), ("mnli", 2), ("anli", 1), ("anli", 2)]):
        run_dir = base / f"tasks={task},seed={seed}"
        assert cell["run_dir"] == run_dir
        rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
        xtreme = [r for r in rows if r["phase"] == "xtreme"]
        assert {(r["language"], r["seed"], tuple(r["intermediate"])) for r in xtreme} == \
            {("en", seed, (task,)), ("de", seed, (task,))}
        assert json.loads((run_dir / "done").read_text())["overrides"] == cell["overrides"]
        # What the cell ran is exactly what was validated.
        assert load_config(SMOKE, cell["overrides"]).run_dir == str(run_dir)
    again = run_sweep(SMOKE, grid, [*QUICK, f"run_dir={base}"], gpus=[])
    assert [c["status"] for c in again] == ["skipped (done)"] * 4
    assert "skipped (done)" in capsys.readouterr().out  # the summary table
    # An edit to the base config leaves every override as it was, but the cells are other runs now.
    edited = tmp_path / "edited.yaml"
    edited.write_text(SMOKE.read_text().replace("lr: 3.0e-3", "lr: 2.0e-3"))
    assert edited.read_text() != SMOKE.read_text()
    stale = run_sweep(edited, grid, [*QUICK, f"run_dir={base}"], gpus=[], dry_run=True)
    assert [c["status"] for c in stale] == ["would run"] * 4


def test_dry_run_and_slurm_scripts(tmp_path, monkeypatch, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"seed": [1, 2], "slurm": {"partition": "gpu", "time": "1:00:00"}}))
    base = tmp_path / "sweep"
    cells = run_sweep(SMOKE, grid, [f"run_dir={base}"], dry_run=True)
    assert [c["status"] for c in cells] == ["would run"] * 2 and not base.exists()
    assert "stilts run" in capsys.readouterr().out

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch: scripts are written, not submitted
    cells = run_sweep(SMOKE, grid, [f"run_dir={base}"], mode="slurm")
    script = (base / "slurm" / "seed=1.sbatch").read_text()
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=1:00:00" in script
    assert "#SBATCH --gres=gpu:1" in script  # a default the grid did not override
    assert f"stilts_xling.cli run {SMOKE}" in script and "seed=1" in script
    assert str(base / "seed=1" / "done") in script
    assert cells[0]["status"].startswith("script ")
    assert "sbatch not found" in capsys.readouterr().out


@pytest.mark.parametrize("grid", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_grids_validate_against_the_config_in_their_comment(grid, tmp_path):
    # The header names the command, e.g. "#   stilts sweep configs/intermediate/mnli.yaml <grid> run_dir=...".
    command = next(line for line in grid.read_text().splitlines() if "stilts sweep" in line).split()
    config = REPO / command[command.index("sweep") + 1]
    cells = run_sweep(config, grid, [f"run_dir={tmp_path}"], dry_run=True)
    assert cells and all(c["status"] == "would run" for c in cells)
