"""PNG figures for `stilts report`: a heatmap of gains over the baseline (intermediate x target, annotated),
per-language bars per target, and intermediate-training learning curves from
`<run_dir>/intermediate/history.json`. matplotlib is optional: without it the report says so and skips
the figures, because tables are the part every user needs."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .files import naming

MISSING = ("matplotlib is not installed, so no plots were drawn: `pip install matplotlib` "
           "(or pass --no-plots to silence this)")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display (clusters, CI)
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with naming(path):
        fig.savefig(path, dpi=120)
    plt.close(fig)  # figures stay in pyplot's registry until closed; a big report would pile them up
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "_", name).strip("_") or "run"


def draw_all(scores: dict, tables: list, entries: list[tuple[Path, dict]], out_dir: Path,
             notes: list[str]) -> list[Path]:
    """Every figure the data allows; returns the files written (none, with a note, without matplotlib)."""
    try:
        plt = _pyplot()
    except ImportError:
        notes.append(MISSING)
        return []
    by_name = {t.name: t for t in tables}
    out = []
    if "delta" in by_name and by_name["delta"].rows:
        out.append(heatmap(plt, by_name["delta"], out_dir / "heatmap_delta.png"))
    else:
        notes.append("no baseline run (intermediate: []) or nothing to compare: no delta heatmap")
    for table in tables:
        if table.name.startswith("lang_") and table.rows:
            out.append(language_bars(plt, table, out_dir / f"bars_{_safe(table.name[5:])}.png"))
    out += learning_curves(plt, entries, out_dir)
    out += data_scaling(plt, scores, out_dir)
    return out


_VOLUME = re.compile(r"(max_train_examples|train_fraction)=([0-9.eE+-]+)")


def data_scaling(plt: Any, scores: dict, out_dir: Path) -> list[Path]:
    """Data-volume studies (a sweep over task_options.<task>.max_train_examples or train_fraction): the
    average target score against the amount of intermediate data, one line per task list, mean ± std over
    seeds. Drawn only when some task list has two or more sizes."""
    curves: dict[tuple[str, str], list[tuple[float, Any]]] = {}
    for setting, sc in scores.items():
        found = _VOLUME.findall(setting.variant)
        if len(found) == 1 and sc.avg is not None:
            kind, value = found[0]
            curves.setdefault(("+".join(setting.tasks), kind), []).append((float(value), sc.avg))
    curves = {k: sorted(v, key=lambda p: p[0]) for k, v in curves.items() if len(v) >= 2}
    out = []
    for kind in sorted({k for _, k in curves}):
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for (label, k), points in sorted(curves.items()):
            if k != kind:
                continue
            xs = [x for x, _ in points]
            means = [s.mean for _, s in points]
            ax.errorbar(xs, means, yerr=[s.std or 0.0 for _, s in points], marker="o", capsize=3, label=label)
        if kind == "max_train_examples":
            ax.set_xscale("log")
        ax.set(xlabel=f"intermediate {kind.replace('_', ' ')}", ylabel="average target score",
               title="Data-volume scaling")
        ax.legend(fontsize=7)
        out.append(_save(plt, fig, out_dir / f"scaling_{kind}.png"))
    return out


def heatmap(plt: Any, table: Any, path: Path) -> Path:
    # The XTREME column is empty unless all nine targets ran; an all-empty column only adds a grey stripe.
    cols = [i for i in range(1, len(table.columns)) if any(row[i] is not None for row in table.rows)]
    grid = [[row[i].value if row[i] is not None else math.nan for i in cols] for row in table.rows]
    limit = max((abs(v) for r in grid for v in r if not math.isnan(v)), default=1.0) or 1.0
    fig, ax = plt.subplots(figsize=(max(5.0, 2.5 + 0.8 * len(cols)), max(2.5, 1.5 + 0.45 * len(grid))))
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")  # 0 = white, gains blue
    ax.set_xticks(range(len(cols)), [table.columns[i] for i in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(grid)), [row[0] for row in table.rows])
    for y, r in enumerate(grid):
        for x, v in enumerate(r):
            # White on the saturated ends of the colour map, black in the pale middle, so every cell reads.
            dark = not math.isnan(v) and abs(v) > 0.6 * limit
            ax.text(x, y, "-" if math.isnan(v) else f"{v:+.1f}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="points")
    ax.set_title(table.title, fontsize=9)
    return _save(plt, fig, path)


def language_bars(plt: Any, table: Any, path: Path) -> Path:
    langs = table.columns[1:]
    width = 0.8 / len(table.rows)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(langs) * max(1, len(table.rows)) ** 0.5 + 2), 3.5))
    for k, row in enumerate(table.rows):
        xs = [i + (k - (len(table.rows) - 1) / 2) * width for i in range(len(langs))]
        means = [c.mean if c is not None else math.nan for c in row[1:]]
        errors = [(c.std or 0.0) if c is not None else 0.0 for c in row[1:]]
        ax.bar(xs, means, width, yerr=errors, label=row[0], capsize=2)
    ax.set_xticks(range(len(langs)), langs)
    ax.set_ylabel("score")
    ax.set_title(table.title, fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, len(table.rows)))
    return _save(plt, fig, path)


def learning_curves(plt: Any, entries: list[tuple[Path, dict]], out_dir: Path) -> list[Path]:
    """One figure per intermediate task list: training loss per task (left) and the dev selection score
    (right), one line per run, so seeds of a setting can be compared at a glance."""
    runs: dict[str, dict[Path, int]] = {}
    for run_dir, row in entries:
        if row.get("intermediate") and (run_dir / "intermediate" / "history.json").is_file():
            runs.setdefault("+".join(row["intermediate"]), {})[run_dir] = row.get("seed")
    out = []
    for label, dirs in sorted(runs.items()):
        fig, (loss_ax, dev_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
        for run_dir, seed in sorted(dirs.items()):
            history = json.loads((run_dir / "intermediate" / "history.json").read_text(encoding="utf-8"))
            name = f"{run_dir.name} (seed {seed})"
            for key in sorted({k for h in history for k in h if k.startswith("loss/")}):
                points = [(h["step"], h[key]) for h in history if key in h]
                loss_ax.plot(*zip(*points), label=f"{name} {key[5:]}")
            dev = [(h["step"], h["dev_score"]) for h in history if "dev_score" in h]
            if dev:
                dev_ax.plot(*zip(*dev), marker=".", label=name)
        loss_ax.set(xlabel="step", ylabel="training loss", title=f"{label}: loss")
        dev_ax.set(xlabel="step", ylabel="dev score", title=f"{label}: dev selection score")
        for ax in (loss_ax, dev_ax):
            if ax.lines:
                ax.legend(fontsize=6)
        out.append(_save(plt, fig, out_dir / f"curves_{_safe(label)}.png"))
    return out
