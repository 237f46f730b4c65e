"""Paper-style tables from `results.jsonl` files: the main table (intermediate setting x XTREME target,
mean ± std over seeds), deltas vs the baseline, per-language tables, the English vs non-English gap and
gains by script, written as markdown, CSV and LaTeX (booktabs), plus PNG plots (see `plots.py`).

A *setting* is one intermediate task list (label: the names joined with "+", or "baseline" for []). Runs
of the same list whose configs differ in a training knob (a sweep over `max_train_examples`, say) become
separate settings labelled with the differing keys; seeds of one setting are pooled into mean ± std.
Scores come from `metrics.task_average` / `xtreme_score` / `group_scores`, so they match xtreme's
evaluate.py (facts.md 2.3)."""
from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .config import hash_dict
from .files import write_atomic
from .languages import XTREME_LANGUAGES, XTREME_R_LANGUAGES, script
from .metrics import XTREME_R_TASKS, XTREME_TASKS, group_scores, task_average, xtreme_r_score, xtreme_score
from .results import read_rows
from .tables import Delta, Stat, Table, to_latex, to_markdown, write_table_csv
from .tasks.registry import TASKS

_KEY = ("run", "config_hash", "seed", "task", "language", "split", "metric")
_REQUIRED = (*_KEY, "phase", "intermediate", "value")
# Config keys that choose what is evaluated or where files go, not how a model is trained: runs that
# differ only in these are the same setting.
_NOT_A_VARIANT = ("run_dir", "seed", "offline", "speed", "data_dir", "intermediate.tasks", "xtreme.tasks",
                  "xtreme.languages", "xtreme.splits", "xtreme.encoder", "xtreme.qa_score")


@dataclass(frozen=True)
class Setting:
    tasks: tuple[str, ...]
    variant: str = ""

    @property
    def label(self) -> str:
        base = "+".join(self.tasks) or "baseline"
        return f"{base} [{self.variant}]" if self.variant else base

    def order(self) -> tuple:
        # Baseline, single tasks in registry (paper) order, then multi-task mixtures.
        names = list(TASKS)
        return (len(self.tasks) > 1, len(self.tasks) > 0,
                [names.index(t) if t in names else len(names) for t in self.tasks], self.tasks, self.variant)


@dataclass
class Scores:
    """One setting's numbers, each pooled over seeds."""
    task: dict[str, Stat] = field(default_factory=dict)
    lang: dict[str, dict[str, Stat]] = field(default_factory=dict)
    avg: Optional[Stat] = None
    xtreme: Optional[Stat] = None
    xtreme_r: Optional[Stat] = None
    groups: dict[str, Stat] = field(default_factory=dict)
    gap: dict[str, tuple[Stat, Stat, Stat]] = field(default_factory=dict)  # task -> (en, non-en, en - non-en)


# ---------------------------------------------------------------------------------------------------
# Reading


def find_results(run_dirs: list[Path], notes: Optional[list[str]] = None) -> list[Path]:
    """Every results.jsonl under `run_dirs`, less runs that `--new-run` archived (<run>/archive/<time>/):
    they were replaced on purpose, and would otherwise turn up as extra settings. Naming an archived run
    itself reports it."""
    missing = [str(d) for d in run_dirs if not Path(d).exists()]
    if missing:
        raise ValueError(f"no such run dir(s): {', '.join(missing)}")
    files, archived = [], []
    for d in map(Path, run_dirs):
        for f in [d] if d.is_file() else sorted(d.rglob("results.jsonl")):
            (archived if _archived(f, d) else files).append(f)
    if archived and notes is not None:
        notes.append(f"left out {len(archived)} archived run(s) (--new-run moved them aside), e.g. "
                     f"{archived[0].parent}; name one to report it")
    if not files:
        raise ValueError(f"no results.jsonl under {', '.join(map(str, run_dirs))}; run `stilts run CONFIG` first")
    return files


def _archived(path: Path, root: Path) -> bool:
    """Whether a folder between `root` and the file `path` is the `archive/` of a run dir (one holding
    config.yaml)."""
    parts = path.parent.relative_to(root).parts if path != root else ()
    return any(p == "archive" and (root.joinpath(*parts[:i]) / "config.yaml").is_file() for i, p in enumerate(parts))


def load_rows(files: list[Path], notes: list[str]) -> list[tuple[Path, dict]]:
    """(run dir, row) pairs, de-duplicated per (run, config_hash, seed, task, language, split, metric),
    the last row winning (a rerun appends; nothing is overwritten). Rows lacking a field are left out."""
    rows: dict[tuple, tuple[Path, dict]] = {}
    for path in files:
        for row in read_rows(path):
            lacking = [k for k in _REQUIRED if k not in row]
            if lacking:
                notes.append(f"{path}: rows without {', '.join(lacking)} were left out")
                continue
            rows[tuple(json.dumps(row[k]) for k in _KEY)] = (path.parent, row)
    return list(rows.values())


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    # Unset options (null, {} or []) are dropped, so "absent" and "left at its default" compare equal.
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {} if data is None or data == [] else {prefix: json.dumps(data, sort_keys=True)}


def _configs(run_dir: Path) -> dict[str, dict[str, str]]:
    """config_hash -> flat config, from the config*.yaml files rundir.start saved in the run dir (the
    digest is config.config_hash's: of the values that differ from the defaults)."""
    out = {}
    for path in sorted(run_dir.glob("config*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out[hash_dict(data)] = _flatten(data)
    return out


def _settings(entries: list[tuple[Path, dict]], notes: list[str]) -> dict[tuple[str, str], Setting]:
    """(run dir, config_hash) -> Setting; the variant names the training keys that differ between runs
    of the same intermediate task list."""
    configs = {d: _configs(d) for d in {d for d, _ in entries}}
    by_tasks: dict[tuple[str, ...], dict[tuple[str, str], Optional[dict[str, str]]]] = {}
    for run_dir, row in entries:
        flat = configs[run_dir].get(row["config_hash"])
        by_tasks.setdefault(tuple(row["intermediate"]), {})[(str(run_dir), row["config_hash"])] = flat
    out = {}
    for tasks, confs in by_tasks.items():
        known = [c for c in confs.values() if c is not None]
        # A baseline has no intermediate phase, so its intermediate.* keys are noise.
        ignored = _NOT_A_VARIANT + (("intermediate",) if not tasks else ())
        varying = sorted(k for k in {k for c in known for k in c}
                         if not any(k == p or k.startswith(p + ".") for p in ignored)
                         and not k.endswith(".data_dir") and len({c.get(k) for c in known}) > 1)
        variants = {key: ", ".join(f"{k}={flat.get(k, '-')}" for k in varying) if flat else ""
                    for key, flat in confs.items()}
        # Up to three differing keys fit in a row label; more get a number, spelled out in the notes.
        numbers = {v: i + 1 for i, v in enumerate(sorted(set(variants.values()) - {""}))} if len(varying) > 3 else {}
        for (run_dir, digest), variant in variants.items():
            if confs[(run_dir, digest)] is None:
                notes.append(f"{run_dir}: no config*.yaml with hash {digest}; its rows get no variant label")
            out[(run_dir, digest)] = Setting(tasks, f"variant {numbers[variant]}" if variant in numbers else variant)
        notes += [f"{Setting(tasks, f'variant {n}').label}: {v}" for v, n in numbers.items()]
    return out


# ---------------------------------------------------------------------------------------------------
# Aggregation


def _task_score(per_lang: dict[str, dict[str, float]], task: str, qa_metric: str) -> float:
    if task in XTREME_TASKS or task in XTREME_R_TASKS:
        return task_average(per_lang, task, qa_metric)
    # A target outside both benchmarks (GLUE, say): unweighted language mean of its main metric.
    metric = TASKS[task].metric if task in TASKS else "accuracy"
    lacking = [lang for lang, m in per_lang.items() if metric not in m]
    if lacking:
        raise ValueError(f"metric {metric!r} missing for languages {lacking}")
    return statistics.fmean(m[metric] for m in per_lang.values())


def aggregate(entries: list[tuple[Path, dict]], split: str, qa_metric: str,
              notes: list[str]) -> dict[Setting, Scores]:
    settings = _settings([e for e in entries if e[1].get("phase") == "xtreme"], notes)
    # setting -> seed -> task -> language -> metric -> (timestamp, value). Two runs of one setting and
    # seed (a copy in another tree) collapse to the newest value rather than counting as two seeds.
    values: dict[Setting, dict[int, dict[str, dict[str, dict[str, tuple[str, float]]]]]] = {}
    for run_dir, row in entries:
        if row.get("phase") != "xtreme" or row.get("split") != split:
            continue
        setting = settings[(str(run_dir), row["config_hash"])]
        cell = values.setdefault(setting, {}).setdefault(row["seed"], {}).setdefault(row["task"], {}) \
            .setdefault(row["language"], {})
        stamped = (str(row.get("timestamp", "")), float(row["value"]))
        if row["metric"] in cell:
            notes.append(f"{setting.label} seed {row['seed']}: results found in several runs; kept the newest")
        cell[row["metric"]] = max(cell.get(row["metric"], stamped), stamped)
    for setting, by_seed in values.items():
        for task, langs in {t: set(ls) for seed in by_seed.values() for t, ls in seed.items()}.items():
            missing = [lang for lang in benchmark_languages(task, split) if lang not in langs]
            if missing:
                notes.append(f"{setting.label} {task}: {len(langs)} languages on {split}, missing {len(missing)} of "
                             f"the benchmark's ({', '.join(missing)}); its average is not the benchmark's")
    return {setting: _pool(values[setting], setting, qa_metric, notes)
            for setting in sorted(values, key=Setting.order)}


def benchmark_languages(task: str, split: str) -> tuple[str, ...]:
    """The languages XTREME's evaluate.py averages `task` over (XTREME-R's for its own tasks), less those
    without this split (UD v2.5 has no dev data for kk, th, tl, yo); () for tasks outside both."""
    langs = XTREME_LANGUAGES.get(task) or XTREME_R_LANGUAGES.get(task, ())
    absent = TASKS[task].missing_splits.get(split, ()) if task in TASKS else ()
    return tuple(lang for lang in langs if lang not in absent)


def _pool(by_seed: dict[int, dict[str, dict[str, dict[str, tuple[str, float]]]]], setting: Setting,
          qa_metric: str, notes: list[str]) -> Scores:
    """Scores per seed (task average over languages, average over targets, XTREME and group scores,
    English gap), then each pooled into a Stat over seeds."""
    task_v: dict[str, list[float]] = {}
    lang_v: dict[tuple[str, str], list[float]] = {}
    gap_v: dict[str, list[tuple[float, float, float]]] = {}
    avg_v: list[float] = []
    xtreme_v: list[float] = []
    xtreme_r_v: list[float] = []
    group_v: dict[str, list[float]] = {}
    for seed in sorted(by_seed):
        task_scores = {}
        for task, langs in by_seed[seed].items():
            per_lang = {lang: {m: v for m, (_, v) in ms.items()} for lang, ms in langs.items()}
            try:
                task_scores[task] = _task_score(per_lang, task, qa_metric)
                # One language through task_average: (EM+F1)/2 for QA, the main metric otherwise.
                lang_scores = {lang: _task_score({lang: ms}, task, qa_metric) for lang, ms in per_lang.items()}
            except ValueError as err:
                notes.append(f"{setting.label} seed {seed} {task}: skipped ({err})")
                task_scores.pop(task, None)
                continue
            task_v.setdefault(task, []).append(task_scores[task])
            for lang, value in lang_scores.items():
                lang_v.setdefault((task, lang), []).append(value)
            others = [v for lang, v in lang_scores.items() if lang != "en"]
            if "en" in lang_scores and others:
                non_en = statistics.fmean(others)
                gap_v.setdefault(task, []).append((lang_scores["en"], non_en, lang_scores["en"] - non_en))
        if task_scores:
            avg_v.append(statistics.fmean(task_scores.values()))
        if xtreme_score(task_scores) is not None:
            xtreme_v.append(xtreme_score(task_scores))
        if xtreme_r_score(task_scores) is not None:
            xtreme_r_v.append(xtreme_r_score(task_scores))
        for group, value in group_scores(task_scores).items():
            group_v.setdefault(group, []).append(value)
        for group, value in group_scores(task_scores, "xtreme-r").items():
            group_v.setdefault(f"xtreme-r/{group}", []).append(value)
    if len({len(v) for v in task_v.values()}) > 1:
        notes.append(f"{setting.label}: targets have different numbers of seeds "
                     f"({', '.join(f'{t}: {len(v)}' for t, v in task_v.items())}); avg mixes them")
    scores = Scores(task={t: Stat(v) for t, v in task_v.items()}, avg=Stat(avg_v) if avg_v else None,
                    xtreme=Stat(xtreme_v) if xtreme_v else None, xtreme_r=Stat(xtreme_r_v) if xtreme_r_v else None,
                    groups={g: Stat(v) for g, v in group_v.items()},
                    gap={t: tuple(Stat(list(part)) for part in zip(*v)) for t, v in gap_v.items()})
    for (task, lang), v in lang_v.items():
        scores.lang.setdefault(task, {})[lang] = Stat(v)
    return scores


# ---------------------------------------------------------------------------------------------------
# Tables


def _ordered(names: set[str], reference: list[str]) -> list[str]:
    reference = list(dict.fromkeys(reference))
    return [n for n in reference if n in names] + sorted(names - set(reference))


def build_tables(scores: dict[Setting, Scores], split: str = "dev") -> list[Table]:
    targets = _ordered({t for s in scores.values() for t in s.task},
                       list(XTREME_TASKS) + list(XTREME_R_TASKS) + list(TASKS))
    label = {s: s.label for s in scores}
    baseline = next((s for s in scores if not s.tasks), None)
    # The XTREME-R column only when some setting has all ten of its targets.
    totals = {"XTREME": lambda sc: sc.xtreme,
              **({"XTREME-R": lambda sc: sc.xtreme_r} if any(sc.xtreme_r for sc in scores.values()) else {})}
    tables = [Table("main", f"Target-task scores ({split}, mean ± std over seeds)",
                    ["intermediate", *targets, "avg", *totals],
                    [[label[s], *(sc.task.get(t) for t in targets), sc.avg, *(f(sc) for f in totals.values())]
                     for s, sc in scores.items()])]
    if baseline is not None:
        base = scores[baseline]

        def delta(a: Optional[Stat], b: Optional[Stat]) -> Optional[Delta]:
            return Delta(a.mean - b.mean) if a is not None and b is not None else None

        tables.append(Table("delta", f"Difference to {label[baseline]} (mean over seeds)",
                            ["intermediate", *targets, "avg", *totals],
                            [[label[s], *(delta(sc.task.get(t), base.task.get(t)) for t in targets),
                              delta(sc.avg, base.avg), *(delta(f(sc), f(base)) for f in totals.values())]
                             for s, sc in scores.items() if s.tasks]))
    for task in targets:
        langs = _ordered({lang for sc in scores.values() for lang in sc.lang.get(task, {})},
                         ["en", *XTREME_LANGUAGES.get(task, TASKS[task].languages if task in TASKS else ())])
        tables.append(Table(f"lang_{task}", f"{task}: per language", ["intermediate", *langs, "avg"],
                            [[label[s], *(sc.lang[task].get(lang) for lang in langs), sc.task.get(task)]
                             for s, sc in scores.items() if task in sc.lang]))
    tables.append(Table("gap", "English vs non-English (en minus the mean of the other languages)",
                        ["intermediate", "task", "en", "non-en", "gap"],
                        [[label[s], task, *sc.gap[task]] for task in targets for s, sc in scores.items()
                         if task in sc.gap]))
    if baseline is not None:
        tables.append(_script_table(scores, baseline, label))
    return tables


def _script_table(scores: dict[Setting, Scores], baseline: Setting, label: dict[Setting, str]) -> Table:
    """Mean gain over the baseline of every (target, language) pair, pooled by the language's script.
    English is left out: it is the training language, so its gain is not cross-lingual transfer."""
    base = scores[baseline].lang
    gains: dict[Setting, dict[str, list[float]]] = {}
    for s, sc in scores.items():
        if not s.tasks:
            continue
        for task, langs in sc.lang.items():
            for lang, stat in langs.items():
                if lang != "en" and lang in base.get(task, {}):
                    gains.setdefault(s, {}).setdefault(script(lang), []).append(stat.mean - base[task][lang].mean)
    scripts = sorted({k for g in gains.values() for k in g}, key=lambda k: (k != "Latin", k))
    return Table("script", f"Gain over {label[baseline]} by script (mean over target x non-English language; "
                 "n pairs)", ["intermediate", *scripts],
                 [[label[s], *(Delta(statistics.fmean(g[k]), len(g[k])) if k in g else None for k in scripts)]
                  for s, g in gains.items()])


def tidy_records(scores: dict[Setting, Scores], tables: list[Table]) -> list[dict]:
    """Every aggregated number, one row each: setting, task, language or script, quantity, mean, std, n."""
    recs = []

    def add(s: Setting, quantity: str, cell: Any, task: str = "", language: str = "", group: str = "") -> None:
        if cell is None:
            return
        stat = cell if type(cell) is Stat else Stat([cell.value])
        recs.append({"setting": s.label, "intermediate": "+".join(s.tasks), "variant": s.variant, "task": task,
                     "language": language, "script": group or (script(language) if language else ""),
                     "quantity": quantity, "mean": round(stat.mean, 6),
                     "std": "" if stat.std is None else round(stat.std, 6),
                     "n": len(cell.values) if type(cell) is Stat else (cell.n or "")})

    for s, sc in scores.items():
        add(s, "avg", sc.avg)
        add(s, "xtreme", sc.xtreme)
        add(s, "xtreme_r", sc.xtreme_r)
        for group, stat in sc.groups.items():
            add(s, f"group:{group}", stat)
        for task, stat in sc.task.items():
            add(s, "score", stat, task)
            for lang, lang_stat in sc.lang.get(task, {}).items():
                add(s, "score", lang_stat, task, lang)
        for task, parts in sc.gap.items():
            for quantity, stat in zip(("en", "non_en", "gap"), parts):
                add(s, quantity, stat, task)
    by_label = {s.label: s for s in scores}
    for table in tables:  # deltas and script gains exist only as table cells
        for row in table.rows if table.name in ("delta", "script") else []:
            for column, cell in zip(table.columns[1:], row[1:]):
                if table.name == "delta":
                    add(by_label[row[0]], "delta", cell, task=column)
                else:
                    add(by_label[row[0]], "gain", cell, group=column)
    return recs


def build_report(run_dirs: list[Path], out_dir: Path, split: str = "dev", qa_metric: str = "em_f1",
                 formats: tuple[str, ...] = ("md", "csv", "tex"), plots: bool = True, digits: int = 1) -> dict:
    """Read every results.jsonl under `run_dirs`, write the tables (and plots) into `out_dir`.

    Returns {"tables": {name: Table}, "records": tidy rows, "files": written paths, "notes": warnings}."""
    if qa_metric not in ("em_f1", "f1"):
        raise ValueError(f"qa_metric must be em_f1 ((EM+F1)/2, xtreme's evaluate.py) or f1, got {qa_metric!r}")
    unknown = set(formats) - {"md", "csv", "tex"}
    if unknown:
        raise ValueError(f"unknown report format(s) {sorted(unknown)}; choose from md, csv, tex")
    notes: list[str] = []
    files = find_results([Path(d) for d in run_dirs], notes)
    entries = load_rows(files, notes)
    scores = aggregate(entries, split, qa_metric, notes)
    if not scores:
        raise ValueError(f"no XTREME results on split {split!r} in {len(files)} results.jsonl file(s)")
    tables = build_tables(scores, split)
    baselines = [s for s in scores if not s.tasks]
    if len(baselines) > 1:
        notes.append(f"{len(baselines)} baseline variants; deltas use {baselines[0].label!r}: pass only the run "
                     "dirs that belong together to compare against another")
    for s, sc in scores.items():
        if baselines and s.tasks and set(sc.task) != set(scores[baselines[0]].task):
            notes.append(f"{s.label} and {baselines[0].label} cover different targets, so their avg columns "
                         "average different tasks")
    records = tidy_records(scores, tables)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    header = (f"split: {split}; QA score: {'(EM+F1)/2' if qa_metric == 'em_f1' else 'F1'}; "
              f"XTREME score only when all 9 targets are present (XTREME-R: all 10); sources: {len(files)} results.jsonl")
    if plots:
        from . import plots as plots_mod

        written += plots_mod.draw_all(scores, tables, entries, out_dir, notes)
    if "md" in formats:
        parts = ["# X-STILTs report", "", header, "", *(to_markdown(t, digits) + "\n" for t in tables)]
        parts += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in written if p.suffix == ".png")] if written else []
        parts += ["## Notes", "", *(f"- {n}" for n in dict.fromkeys(notes))] if notes else []
        written.append(out_dir / "report.md")
        write_atomic(written[-1], "\n".join(parts) + "\n")
    if "tex" in formats:
        written.append(out_dir / "report.tex")
        write_atomic(written[-1], f"% {header}\n% needs \\usepackage{{booktabs}}\n\n"
                     + "\n\n".join(to_latex(t, digits) for t in tables) + "\n")
    if "csv" in formats:
        written.append(out_dir / "report.csv")
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["setting"])
        writer.writeheader()
        writer.writerows(records)
        write_atomic(written[-1], buffer.getvalue())
        for table in tables:
            written.append(out_dir / f"table_{table.name}.csv")
            write_table_csv(table, written[-1])
    return {"tables": {t.name: t for t in tables}, "records": records, "files": written,
            "notes": list(dict.fromkeys(notes))}
