"""The `stilts` command. Parses arguments, loads the config, calls the pipeline; no logic of its own."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from .config import ConfigError, ExperimentConfig, load_config
from .files import describe

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_show_locals=False,
                  help="English intermediate-task training (STILTs) and zero-shot cross-lingual evaluation "
                       "on XTREME. Every command takes a YAML config and key.sub=value overrides.")

CONFIG = typer.Argument(..., help="YAML experiment config, e.g. configs/smoke.yaml", exists=False)
OVERRIDES = typer.Argument(None, help="key.sub=value overrides, e.g. seed=2 intermediate.train.lr=2e-5")
NEW_RUN = typer.Option(False, "--new-run", help="the run dir holds a different config: archive it and start afresh")


def _load(config: Path, overrides: Optional[List[str]]) -> ExperimentConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)


def _guard(fn: Callable[[], None]) -> None:
    """User errors (bad data, missing files, bad config) end with one clear message and exit code 2."""
    from .readers import DataError
    from .train import TrainingStopped

    try:
        fn()
    except TrainingStopped as err:  # a signal or a diverged loss: the checkpoint is safe
        typer.echo(f"stopped: {err}", err=True)
        raise typer.Exit(3)
    except OSError as err:  # disk full, unreadable files, hub
        typer.echo(f"error: {describe(err)}", err=True)
        raise typer.Exit(2)
    except (ConfigError, DataError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _check_data_or_exit(cfg: ExperimentConfig, phases: tuple[str, ...]) -> None:
    """Fail at once with the full list of what is missing: data files, and offline also models and hub
    datasets that are not in the local caches."""
    import os

    from .pipeline import check_data
    from .prepare import offline_problems

    offline = cfg.offline or os.environ.get("HF_HUB_OFFLINE") == "1"
    problems = offline_problems(cfg, phases) if offline else check_data(cfg, phases)
    if problems:
        typer.echo(f"error: {len(problems)} thing(s) missing:\n{_listing(problems)}", err=True)
        raise typer.Exit(2)


def _listing(problems: list[str]) -> str:
    """One line per problem, each fix ("what; fix") said once under the problems that share it: a full
    XTREME config lacking its data would otherwise repeat one download hint 134 times."""
    groups: dict[str, list[str]] = {}
    for problem in problems:
        what, _, fix = problem.partition("; ")
        groups.setdefault(fix, []).append(what if fix else problem)
    return "\n".join("\n".join(f"  {w}" for w in whats) + (f"\n    -> {fix}" if fix else "")
                     for fix, whats in groups.items())


@app.command("train-intermediate")
def train_intermediate(config: Path = CONFIG, overrides: Optional[List[str]] = OVERRIDES, new_run: bool = NEW_RUN) -> None:
    """Phase 2: train the encoder on English intermediate task(s); saves <run_dir>/intermediate/encoder.

    Example: stilts train-intermediate configs/intermediate/mnli.yaml seed=2
    """
    from . import pipeline, rundir

    cfg = _load(config, overrides)
    _setup_logging()
    _check_data_or_exit(cfg, ("intermediate",))
    def go() -> None:
        with rundir.start(cfg, new_run) as ctx:
            ctx.accelerator.print(f"encoder saved to {pipeline.train_intermediate(ctx)}")

    _guard(go)


@app.command("eval-xtreme")
def eval_xtreme(config: Path = CONFIG, overrides: Optional[List[str]] = OVERRIDES, new_run: bool = NEW_RUN) -> None:
    """Phase 3: fine-tune on each target's English data, evaluate zero-shot on every language.

    Example: stilts eval-xtreme configs/xtreme.yaml xtreme.encoder=runs/mnli/intermediate/encoder
    """
    from . import pipeline, rundir

    cfg = _load(config, overrides)
    _setup_logging()
    _check_data_or_exit(cfg, ("xtreme",))

    def go() -> None:
        pipeline.encoder_source(cfg)  # a missing encoder fails before anything is written
        with rundir.start(cfg, new_run) as ctx:
            pipeline.eval_xtreme(ctx)
            ctx.accelerator.print(pipeline.summary(ctx))

    _guard(go)


@app.command("run")
def run(config: Path = CONFIG, overrides: Optional[List[str]] = OVERRIDES, new_run: bool = NEW_RUN) -> None:
    """All phases: load the model, intermediate training, then XTREME evaluation.

    Example: HF_HUB_OFFLINE=1 stilts run configs/smoke.yaml
    """
    from . import pipeline, rundir

    cfg = _load(config, overrides)
    _setup_logging()
    _check_data_or_exit(cfg, ("intermediate", "xtreme"))

    def go() -> None:
        with rundir.start(cfg, new_run) as ctx:
            pipeline.train_intermediate(ctx)
            pipeline.eval_xtreme(ctx)
            ctx.accelerator.print(pipeline.summary(ctx))

    _guard(go)


@app.command("validate")
def validate(config: Path = CONFIG, overrides: Optional[List[str]] = OVERRIDES,
             strict: bool = typer.Option(False, "--strict", help="missing or unreadable data files are errors too"),
             read_data: bool = typer.Option(False, "--read-data",
                                            help="also parse every data file the run loads (minutes on full data)"))\
        -> None:
    """Check a config (keys, types, values, task names) and list data files it needs that are missing;
    with --read-data, also read them all and list every malformed file.

    Example: stilts validate configs/xtreme.yaml data_dir=/data/xtreme --strict --read-data
    """
    from .pipeline import check_data, read_data as read_all

    cfg = _load(config, overrides)
    typer.echo(f"{config}: config OK")
    phases = ("intermediate", "xtreme")
    missing = check_data(cfg, phases)
    level = "error" if strict else "warning"
    if missing:
        typer.echo(f"{level}: {len(missing)} data file(s) missing (a run fails at start until they exist):\n"
                   + _listing(missing))
    unreadable = []
    if read_data and cfg.data_source == "hub":
        typer.echo("note: --read-data reads original files (data_source: files); hub datasets are checked as they load")
    elif read_data:
        unreadable = read_all(cfg, phases)
        typer.echo(f"{level}: {len(unreadable)} data file(s) unreadable (a run stops when it reaches them):\n"
                   f"{_listing(unreadable)}" if unreadable else "data files read without problems")
    if strict and (missing or unreadable):
        raise typer.Exit(1)


@app.command("score")
def score(task: str = typer.Option(..., help="xnli, pawsx, udpos, panx, xquad, mlqa, tydiqa, bucc2018, tatoeba"),
          lang: str = typer.Option(..., help="language code, e.g. de (selects MLQA's normalisation)"),
          predictions: Path = typer.Option(..., help="predictions in XTREME's submission format"),
          gold: Path = typer.Option(..., help="gold file (SQuAD json, token<TAB>tag lines, labels, ...)")) -> None:
    """Score any system's predictions against gold, printing the metrics as JSON.

    Example: stilts score --task mlqa --lang zh --predictions preds.json --gold test-context-zh-question-zh.json
    """
    import json

    from .scoring import score_files

    _guard(lambda: typer.echo(json.dumps(score_files(task, lang, predictions, gold), indent=2)))


@app.command("report")
def report(run_dirs: List[Path] = typer.Argument(..., help="run dirs, or trees of them (e.g. a sweep's run_dir)"),
           out: Optional[Path] = typer.Option(None, help="output folder [default: <first RUN_DIR>/report]"),
           split: str = typer.Option("dev", help="which split's results to tabulate: dev or test"),
           qa_metric: str = typer.Option("em_f1", help="QA score: em_f1 = (EM+F1)/2 as xtreme's evaluate.py, or f1"),
           plots: bool = typer.Option(True, "--plots/--no-plots", help="PNG figures (needs matplotlib)")) -> None:
    """Paper-style tables (markdown, CSV, LaTeX) and plots from every results.jsonl under RUN_DIRS.

    Example: stilts report runs/xstilts --out reports/xstilts
    """
    from .report import build_report
    from .tables import to_markdown

    target = out or run_dirs[0] / "report"

    def go() -> None:
        result = build_report(run_dirs, target, split=split, qa_metric=qa_metric, plots=plots)
        typer.echo(to_markdown(result["tables"]["main"]))
        if "delta" in result["tables"]:
            typer.echo("\n" + to_markdown(result["tables"]["delta"]))
        for note in result["notes"]:
            typer.echo(f"note: {note}", err=True)
        typer.echo(f"\nwrote {len(result['files'])} files to {target} (report.md, report.tex, report.csv, ...)")

    _guard(go)


@app.command("sweep")
def sweep(config: Path = CONFIG,
          grid: Path = typer.Argument(..., help="GRID.yaml: override key -> list of values (+ optional slurm:)"),
          overrides: Optional[List[str]] = OVERRIDES,
          slurm: bool = typer.Option(False, "--slurm", help="write one sbatch script per cell and submit it"),
          dry_run: bool = typer.Option(False, "--dry-run", help="validate every cell and list them; run nothing"),
          gpus: Optional[str] = typer.Option(None, help="GPU ids for concurrent local cells, e.g. 0,1 "
                                                        "[default: every visible GPU]")) -> None:
    """Run every cell of a grid as `stilts run CONFIG k=v ... run_dir=<run_dir>/<cell>`; a rerun skips finished cells.

    Example: stilts sweep configs/intermediate/mnli.yaml configs/sweeps/example_grid.yaml run_dir=runs/xstilts --slurm
    """
    from .sweep import run_sweep

    def go() -> None:
        cells = run_sweep(config, grid, overrides or [], mode="slurm" if slurm else "local",
                          gpus=gpus.split(",") if gpus else None, dry_run=dry_run)
        if any("failed" in c["status"] for c in cells):
            raise typer.Exit(1)

    _guard(go)


@app.command("prepare")
def prepare_cmd(config: Path = CONFIG, overrides: Optional[List[str]] = OVERRIDES,
                check: bool = typer.Option(False, "--check", help="only list what an offline run would lack")) -> None:
    """Download and cache every model and hub dataset CONFIG needs, for offline clusters sharing HF_HOME.

    Example: stilts prepare configs/intermediate/mnli.yaml data_source=hub
    """
    from . import prepare

    cfg = _load(config, overrides)
    problems = prepare.offline_problems(cfg) if check else prepare.prepare(cfg)
    if problems:
        typer.echo(f"error: {len(problems)} problem(s):\n  " + "\n  ".join(problems), err=True)
        raise typer.Exit(2)
    typer.echo(f"{config}: everything it needs is {'cached' if check else 'in place'}")


@app.command("bench")
def bench(shapes: str = typer.Option("mnli,squad,hellaswag", help="comma-separated: mnli, squad, hellaswag"),
          steps: int = typer.Option(30, help="timed optimizer steps per run"),
          warmup: int = typer.Option(5, help="untimed steps before them (CUDA graphs and compilation come earlier)"),
          batch_size: int = typer.Option(32, help="examples per optimizer step, for the Trainer and for stilts"),
          tiny: Optional[bool] = typer.Option(None, "--tiny/--full",
                                              help="2-layer hidden-32 model or XLM-R Large (default: tiny on CPU)"),
          device: Optional[str] = typer.Option(None, help="cuda, cuda:1 or cpu (default: cuda when there is one)"),
          variants: Optional[str] = typer.Option(None, help="comma-separated stilts speed variants "
                                                            "(default: all on CUDA; padded, unpadded, unpadded+flat, "
                                                            "unpadded+flat+lazy on CPU; a wrong name lists them all)"),
          tokens_per_step: int = typer.Option(16384, help="add an MNLI run with this many real tokens a step; 0: none"),
          trainer: bool = typer.Option(True, "--trainer/--no-trainer", help="run the plain HF Trainer baseline"),
          time_budget: Optional[float] = typer.Option(None, help="start no new run after this many seconds"),
          out: Optional[Path] = typer.Option(None, help="also write the JSON here (rewritten after every run)"),
          profile: int = typer.Option(0, help="after each stilts run, profile this many more steps: kernels by "
                                              "time, per category, and GPU idle time")) -> None:
    """Throughput of stilts's training step against the plain HF Trainer on the same device and data:
    samples/s, real tokens/s, MFU on real tokens, peak memory and the ratio, as a table and as JSON.

    Example: stilts bench --out benchmarks/h100.json
    """
    import json

    from .bench import format_table, run_bench

    _setup_logging()
    report = run_bench(tuple(s for s in shapes.split(",") if s), steps, warmup, batch_size, device, tiny, out,
                       variants.split(",") if variants else None, tokens_per_step or None, trainer, time_budget,
                       profile=profile)
    typer.echo(format_table(report))
    typer.echo(json.dumps(report))


@app.command("tasks")
def tasks() -> None:
    """List every task: family, phase, languages, selection metric and data source.

    Example: stilts tasks
    """
    from .tasks.registry import TASKS

    rows = [("task", "family", "phases", "langs", "metric", "files", "hub")]
    for spec in TASKS.values():
        langs = f"{len(spec.languages)}" if len(spec.languages) > 3 else ",".join(spec.languages)
        rows.append((spec.name, spec.family, "+".join(spec.phases), langs, spec.metric,
                     f"{spec.files.folder}/ ({spec.files.reader})" if spec.files else "-",
                     spec.hub.path + (f" [{spec.hub.name}]" if spec.hub and spec.hub.name else "") if spec.hub else "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


if __name__ == "__main__":
    app()
