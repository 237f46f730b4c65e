"""Grid sweeps: every combination of the values in a GRID.yaml, each run as `stilts run CONFIG k=v ...` in
its own run dir, locally (one at a time, or one per GPU) or as one Slurm job per cell.

GRID.yaml maps override keys to lists of values; the optional `slurm:` mapping holds sbatch options:

    intermediate.tasks: [[mnli], [squad_v1], [mnli, squad_v1]]
    seed: [1, 2, 3]
    slurm: {partition: gpu, time: "48:00:00"}

Each cell's run dir is `<run_dir of the config>/<cell name>`, the name spelling out the varying values
("tasks=mnli,seed=1"). After a cell succeeds the sweep writes `<cell run dir>/done` holding the cell's
overrides; a rerun with the same overrides skips that cell (the pipeline itself also skips finished
phases, so an interrupted cell resumes where it stopped)."""
from __future__ import annotations

import itertools
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from .config import ConfigError, ExperimentConfig, config_hash, load_config, read_yaml
from .files import write_atomic

DONE = "done"
SBATCH_DEFAULTS = {"gres": "gpu:1", "cpus-per-task": "8", "time": "24:00:00"}


def expand_grid(grid: dict) -> list[dict[str, Any]]:
    """The cartesian product of the grid's value lists, as one {override key: value} dict per cell, in
    the grid's key order with the last key varying fastest. Keys other than override keys (`slurm`)
    must be removed first (`read_grid` does)."""
    problems = [f"{key}: expected a non-empty list of values, got {value!r} (a single value is [value]; "
                "a list-valued key such as intermediate.tasks takes a list of lists)"
                for key, value in grid.items() if not isinstance(value, list) or not value]
    problems += [f"{key}: the sweep sets run_dir for every cell; set the sweep's base with run_dir=DIR"
                 for key in grid if key == "run_dir"]
    if problems:
        raise ConfigError("grid", problems)
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def _value_name(value: Any) -> str:
    text = {list: lambda v: "+".join(map(_value_name, v)) or "none",
            dict: lambda v: "+".join(f"{k}-{_value_name(x)}" for k, x in v.items()) or "none"
            }.get(type(value), str)(value)
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", text)


def cell_names(cells: list[dict[str, Any]]) -> list[str]:
    """Readable, deterministic, unique directory names: `key=value` for every key whose value varies
    across the grid, joined by commas. A key is shortened to its last part unless that is ambiguous."""
    keys = list(dict.fromkeys(k for cell in cells for k in cell))
    varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in cells}) > 1]
    last = [k.rsplit(".", 1)[-1] for k in varying]
    short = {k: s if last.count(s) == 1 else k for k, s in zip(varying, last)}
    names = [",".join(f"{short[k]}={_value_name(c[k])}" for k in varying) or "default" for c in cells]
    seen: dict[str, int] = {}
    out = []
    for name in names:  # two values can sanitize to the same text ("a b" and "a-b"); keep names unique
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}~{seen[name]}")
    return out


def read_grid(path: Path) -> tuple[dict[str, list], dict[str, str]]:
    """(override grid, sbatch options) from a GRID.yaml."""
    data = read_yaml(Path(path))
    slurm = data.pop("slurm", None) or {}
    if not isinstance(slurm, dict):
        raise ConfigError(str(path), [f"slurm: expected a mapping of sbatch options, got {slurm!r}"])
    return data, {**SBATCH_DEFAULTS, **{str(k): str(v) for k, v in slurm.items()}}


def _override_text(key: str, value: Any) -> str:
    # JSON is YAML, so config.parse_override reads back exactly this value (lists, dicts, strings, numbers).
    return f"{key}={json.dumps(value)}"


def _base_run_dir(config: Path, overrides: list[str]) -> Path:
    for text in reversed(overrides):
        if text.split("=", 1)[0].strip() == "run_dir":
            return Path(text.split("=", 1)[1])
    return Path(read_yaml(Path(config)).get("run_dir", ExperimentConfig.run_dir))


def plan(config: Path, grid_path: Path, overrides: list[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every cell with its name, run dir and full override list, each validated with load_config first;
    raises ConfigError listing the problems of all cells at once."""
    grid, sbatch = read_grid(grid_path)
    cells = expand_grid(grid)
    base = _base_run_dir(config, overrides)
    # The base run_dir is replaced by each cell's; keeping it would only make the commands confusing.
    overrides = [o for o in overrides if o.split("=", 1)[0].strip() != "run_dir"]
    out, problems = [], []
    for cell, name in zip(cells, cell_names(cells)):
        run_dir = base / name
        args = [*overrides, *(_override_text(k, v) for k, v in cell.items()), _override_text("run_dir", str(run_dir))]
        digest = None
        try:
            digest = config_hash(load_config(config, args))
        except ConfigError as err:
            problems += [f"cell {name}: {p}" for p in err.problems]
        out.append({"name": name, "run_dir": run_dir, "overrides": args, "config_hash": digest, "status": "pending",
                    "seconds": None})
    if problems:
        raise ConfigError(f"{config} x {grid_path}", problems)
    return out, sbatch


def _is_done(cell: dict) -> bool:
    marker = Path(cell["run_dir"]) / DONE
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
        # The resolved config too: an edit to the base config changes no override but is another run.
        return done.get("overrides") == cell["overrides"] and done.get("config_hash") == cell["config_hash"]
    except (OSError, ValueError):
        return False


def _command(config: Path, cell: dict) -> list[str]:
    # `python -m stilts_xling.cli` is the `stilts` entry point without depending on PATH.
    return [sys.executable, "-m", "stilts_xling.cli", "run", str(config), *cell["overrides"]]


def _marker_json(cell: dict) -> str:
    return json.dumps({"overrides": cell["overrides"], "config_hash": cell["config_hash"]})


def _devices(gpus: Optional[list[str]]) -> list[Optional[str]]:
    """GPU ids to run cells on concurrently; [None] = one at a time with the environment untouched."""
    if gpus is not None:
        return list(gpus) or [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d for d in visible.split(",") if d.strip()]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    return ids if len(ids) > 1 else [None]


def _run_local(config: Path, cells: list[dict], devices: list[Optional[str]]) -> None:
    free: "queue.Queue[Optional[str]]" = queue.Queue()
    for device in devices:
        free.put(device)

    def work(cell: dict) -> None:
        device = free.get()  # a worker holds one GPU for the whole cell
        try:
            env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": device} if device is not None else {})}
            run_dir = Path(cell["run_dir"])
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"[sweep] start {cell['name']}" + (f" on GPU {device}" if device is not None else ""), flush=True)
            started = time.perf_counter()
            with open(run_dir / "sweep.log", "a", encoding="utf-8") as log:
                code = subprocess.run(_command(config, cell), env=env, stdout=log, stderr=subprocess.STDOUT).returncode
            cell["seconds"] = time.perf_counter() - started
            if code == 0:
                write_atomic(run_dir / DONE, _marker_json(cell))
            cell["status"] = "done" if code == 0 else f"failed (exit {code}; see {run_dir / 'sweep.log'})"
            print(f"[sweep] {cell['name']}: {cell['status']} in {cell['seconds']:.0f} s", flush=True)
        finally:
            free.put(device)

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        list(pool.map(work, cells))


def write_sbatch(config: Path, cell: dict, options: dict[str, str], script_dir: Path) -> Path:
    run_dir = Path(cell["run_dir"]).resolve()
    lines = ["#!/bin/bash", f"#SBATCH --job-name={cell['name'][:64]}", f"#SBATCH --output={run_dir}/slurm-%j.out",
             *(f"#SBATCH --{k}={v}" for k, v in options.items()), "set -euo pipefail",
             f"cd {shlex.quote(str(Path.cwd()))}", f"mkdir -p {shlex.quote(str(run_dir))}",
             shlex.join(_command(config, cell)),
             # Same marker as a local run, so local and Slurm reruns skip each other's finished cells.
             f"printf '%s' {shlex.quote(_marker_json(cell))} > {shlex.quote(str(run_dir / DONE))}"]
    path = script_dir / f"{cell['name']}.sbatch"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def _submit(config: Path, cells: list[dict], options: dict[str, str], script_dir: Path) -> None:
    script_dir.mkdir(parents=True, exist_ok=True)
    scripts = [write_sbatch(config, cell, options, script_dir) for cell in cells]
    sbatch = shutil.which("sbatch")
    for cell, script in zip(cells, scripts):
        if sbatch is None:
            cell["status"] = f"script {script}"
            continue
        done = subprocess.run([sbatch, str(script)], capture_output=True, text=True)
        cell["status"] = (f"submitted ({done.stdout.strip()})" if done.returncode == 0
                          else f"sbatch failed: {done.stderr.strip()}")
    if sbatch is None and scripts:
        print(f"sbatch not found on PATH; on the cluster submit with:\n  for f in {script_dir}/*.sbatch; "
              "do sbatch \"$f\"; done")


def summary(cells: list[dict]) -> str:
    rows = [("cell", "status", "time", "run_dir")] + [
        (c["name"], c["status"], "-" if c["seconds"] is None else f"{c['seconds']:.0f}s", str(c["run_dir"]))
        for c in cells]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows)


def run_sweep(config: Path, grid_path: Path, overrides: Optional[list[str]] = None, mode: str = "local",
              gpus: Optional[list[str]] = None, dry_run: bool = False) -> list[dict]:
    """Validate every cell, then run (local) or submit (slurm) the unfinished ones; prints a summary table
    and returns the cells ({name, run_dir, overrides, status, seconds})."""
    modes = ("local", "slurm")
    if mode not in modes:
        raise ValueError(f"mode must be one of {modes}, got {mode!r}")
    config = Path(config)
    cells, sbatch_options = plan(config, Path(grid_path), list(overrides or []))
    for cell in cells:
        if _is_done(cell):
            cell["status"] = "skipped (done)"
    todo = [c for c in cells if c["status"] == "pending"]
    if dry_run:
        for cell in todo:
            cell["status"] = "would run"
            print(shlex.join(["stilts", "run", str(config), *cell["overrides"]]))
    elif mode == "local":
        _run_local(config, todo, _devices(gpus))
    else:
        _submit(config, todo, sbatch_options, _base_run_dir(config, list(overrides or [])) / "slurm")
    print(summary(cells))
    return cells
