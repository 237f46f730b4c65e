"""Data parallelism: 2 CPU processes (gloo, launched by torchrun as on a GPU node) reach the same metrics as
1 process at the same global batch. Dropout is off so both runs compute the same function; DDP's gradient
average over the two half batches equals the 1-process gradient of the whole batch."""
import os
import subprocess
import sys

from conftest import REPO, SMOKE
from stilts_xling.results import read_rows


def _metrics(run_dir):
    rows = read_rows(run_dir / "results.jsonl")
    return {(r["phase"], r["task"], r["language"], r["split"], r["metric"]): r["value"] for r in rows}, len(rows)


def test_two_processes_match_one_process(tmp_path, cli):
    over = ["model.dropout=0", "xtreme.languages={xnli: [en, de]}"]
    assert cli("run", SMOKE, f"run_dir={tmp_path / 'one'}", *over).exit_code == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "-m", "stilts_xling.cli", "run", str(SMOKE), f"run_dir={tmp_path / 'two'}", *over],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    one, n_one = _metrics(tmp_path / "one")
    two, n_two = _metrics(tmp_path / "two")
    assert n_two == n_one  # rank 0 alone writes results
    assert two.keys() == one.keys()
    for key in one:
        assert abs(two[key] - one[key]) < 1e-6, key
    assert out.stdout.count("intermediate mnli dev:") == 1  # rank 0 alone reports
