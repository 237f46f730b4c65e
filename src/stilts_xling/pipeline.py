"""The three phases. Each writes under `run_dir` (a rundir.Context) and skips work whose results already
exist."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from . import metrics, parallel, translated
from .cache import cached_features
from .cache import default_dir as default_cache_dir
from .config import ExperimentConfig, SamplerConfig, TaskOptions, merge_train
from .data import load_examples, missing_files, subsample
from .evaluate import evaluate
from .files import write_atomic
from .languages import XTREME_R_LANGUAGES
from .model import MultiTaskModel, load_encoder, load_tokenizer, save_encoder, set_dropout, tokenizer_source
from .readers import DataError
from .report import benchmark_languages
from .rundir import Context
from .scoring import write_predictions
from .results import append_rows, format_metrics, metric_rows, read_rows, unrecorded
from .tasks.base import TaskSpec
from .tasks.registry import family_of, get_task
from .train import TaskData, train

log = logging.getLogger(__name__)


def data_needs(cfg: ExperimentConfig, phases: tuple[str, ...]) -> list[translated.Need]:
    """Every (task, split, language, options) the requested phases load, in the order they load them."""
    needs: list[translated.Need] = []
    if "intermediate" in phases:
        for name in cfg.intermediate.tasks:
            spec, opts = get_task(name), cfg.intermediate.task_options.get(name)
            needs += translated.train_needs(spec, opts) if translated.applies(spec) else [(spec, "train", "en", opts)]
            dev_spec = get_task(spec.train_task) if spec.train_task else spec
            needs.append((dev_spec, dev_spec.dev_split, "en", None if spec.train_task else opts))
            needs += [(spec, spec.dev_split, lang, opts) for lang in _own_dev_languages(cfg, spec)]
            needs += [(get_task(extra), "train", "en", None) for extra in spec.extra_train]
    if "xtreme" in phases:
        for name in cfg.xtreme.tasks:
            spec, opts = get_task(name), cfg.xtreme.task_options.get(name)
            source = get_task(spec.train_task) if spec.train_task else spec
            if family_of(spec).name != "retrieval":
                needs += [(source, split, "en", None if spec.train_task else opts)
                          for split in ("train", source.dev_split)]
            for lang, split in wanted_results(cfg, spec):
                needs.append((spec, split, lang, opts))
                if split == "test" and spec.family == "retrieval" and spec.files and "dev" in spec.files.splits:
                    needs.append((spec, "dev", lang, opts))  # BUCC's threshold comes from dev
    return needs


def check_data(cfg: ExperimentConfig, phases: tuple[str, ...]) -> list[str]:
    """Every expected-but-missing file for the requested phases, so a run fails at once, not hours in."""
    return list(dict.fromkeys(p for spec, split, lang, opts in data_needs(cfg, phases)
                              for p in missing_files(spec, split, lang, cfg, opts)))


def read_data(cfg: ExperimentConfig, phases: tuple[str, ...]) -> list[str]:
    """Parse every present data file the phases load, with the reader a run uses: each malformed file's
    first problem (file, line, fix), so that a bad record deep in a training file shows up before the
    run, not hours into it. Missing files are check_data's to report."""
    unique = {(spec.name, split, lang, id(opts)): (spec, split, lang, opts)
              for spec, split, lang, opts in data_needs(cfg, phases)}
    needs = [n for n in unique.values() if not missing_files(*n[:3], cfg, n[3])]
    problems = []
    for spec, split, lang, opts in tqdm(needs, desc="reading data", disable=len(needs) < 5):
        try:
            load_examples(spec, split, lang, cfg, opts)
        except (DataError, OSError) as err:  # OSError: a file that cannot be opened (permissions)
            problems.append(str(err))
    return list(dict.fromkeys(problems))


def target_languages(cfg: ExperimentConfig, spec: TaskSpec) -> tuple[str, ...]:
    """xtreme.languages.<task> if set, else the benchmark's list for the task (XTREME-R's are longer for
    UD-POS, PAN-X, Tatoeba and XQuAD), else every language the task has."""
    if spec.name in cfg.xtreme.languages:
        return tuple(cfg.xtreme.languages[spec.name])
    table = XTREME_R_LANGUAGES if cfg.xtreme.benchmark == "xtreme-r" else {}
    return tuple(table.get(spec.name, spec.languages))


def wanted_results(cfg: ExperimentConfig, spec: TaskSpec) -> list[tuple[str, str]]:
    """(language, split) pairs to evaluate: the configured ones that the task's data has."""
    return [(lang, split) for lang in target_languages(cfg, spec) for split in cfg.xtreme.splits
            if (spec.files is None or split in spec.files.splits) and lang not in spec.missing_splits.get(split, ())]


def _train_examples(spec: TaskSpec, cfg: ExperimentConfig, opts: Optional[TaskOptions]) -> list[dict]:
    """The task's English training set (a translated task's chosen languages) plus any `extra_train`
    tasks' (ANLI+), then the volume cap."""
    examples = (translated.train_examples(spec, cfg, opts) if translated.applies(spec)
                else load_examples(spec, "train", "en", cfg, opts))
    for extra in spec.extra_train:
        examples += load_examples(get_task(extra), "train", "en", cfg)
    return subsample(examples, opts, cfg.seed)


def _fit_labels(spec: TaskSpec, train_examples: list[dict]) -> TaskSpec:
    """Specs whose label set comes from the training data get it now, before any featurization."""
    return family_of(spec).fit_labels(spec, train_examples) if spec.labels_from_train else spec


def _features(cfg: ExperimentConfig, spec: TaskSpec, examples: list[dict], tokenizer: Any,
              max_length: int) -> list[dict]:
    family = family_of(spec)
    cache_dir = (Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()) if cfg.feature_cache else None
    return cached_features(cache_dir, spec, family, examples, tokenizer, max_length,
                           lambda: family.featurize(spec, examples, tokenizer, max_length))


# ---------------------------------------------------------------------------------------------------
# Phase 2


def intermediate_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.run_dir) / "intermediate"


def train_intermediate(ctx: Context) -> Optional[Path]:
    cfg = ctx.cfg
    if not cfg.intermediate.tasks:
        log.info("no intermediate tasks configured: nothing to train")
        return None
    out = intermediate_dir(cfg) / "encoder"
    done = intermediate_dir(cfg) / "done.json"
    if done.exists() and out.exists():
        log.info("intermediate training already finished: %s (delete %s to retrain)", out, done)
        return out
    tokenizer = load_tokenizer(tokenizer_source(cfg.model))
    specs = [get_task(n) for n in cfg.intermediate.tasks]
    tasks = []
    for spec in specs:
        hp = merge_train(spec.train, cfg.intermediate.train)
        opts = cfg.intermediate.task_options.get(spec.name)
        train_ex = _train_examples(spec, cfg, opts)
        spec = _fit_labels(spec, train_ex)
        # A task derived from another (translated data: mnli_mt <- mnli) selects on that task's English dev.
        dev_spec = get_task(spec.train_task) if spec.train_task else spec
        dev_ex = load_examples(dev_spec, dev_spec.dev_split, "en", cfg, None if spec.train_task else opts)
        tasks.append(TaskData(spec, hp, _features(cfg, spec, train_ex, tokenizer, hp.max_length), dev_ex,
                              _features(cfg, spec, dev_ex, tokenizer, hp.max_length)))
        log.info("%s: %d train / %d dev examples", spec.name, len(train_ex), len(dev_ex))
    # One task: its own defaults drive the optimizer; several: the phase's config over global defaults.
    phase_hp = merge_train(specs[0].train if len(specs) == 1 else None, cfg.intermediate.train)
    encoder = load_encoder(cfg.model.name, cfg.model, tokenizer)
    model = set_dropout(MultiTaskModel(encoder, [t.spec for t in tasks]), cfg.model.dropout)
    ckpt = intermediate_dir(cfg) / "checkpoint.pt"
    with ctx.tracker("intermediate") as tracker:
        result = train(model, tasks, phase_hp, cfg.intermediate.sampler, ctx.accelerator, tokenizer.pad_token_id,
                       cfg.seed, cfg.bf16, desc="intermediate " + "+".join(cfg.intermediate.tasks),
                       checkpoint_path=ckpt, speed=cfg.speed, tracker=tracker, fsdp=ctx.fsdp)
    model = ctx.accelerator.unwrap_model(model).to(ctx.accelerator.device)
    rows = []
    for task in tasks:  # full dev sets for the record; selection used the subset
        for lang, examples, features in _dev_sets(cfg, task, tokenizer):
            scores, _ = evaluate(model, task.spec, examples, features, lang,
                                 (task.hp.micro_batch_size or task.hp.batch_size) * 2, ctx.accelerator.device,
                                 tokenizer.pad_token_id, cfg.bf16)
            rows += metric_rows(ctx.row_base("intermediate", task.spec.name, language=lang,
                                             split=task.spec.dev_split, best_step=result.best_step), scores)
            where = "" if lang == "en" else f" {lang}"
            ctx.accelerator.print(f"intermediate {task.spec.name}{where} dev: {format_metrics(scores)}")
    encoder_state = _encoder_state(ctx, model)
    if ctx.accelerator.is_main_process:
        save_encoder(model.encoder, tokenizer, out, encoder_state)
        append_rows(ctx.results, unrecorded(ctx.results, rows))
        write_atomic(intermediate_dir(cfg) / "history.json", json.dumps(result.history, indent=1))
        write_atomic(done, json.dumps({"best_step": result.best_step, "best_score": result.best_score}))
        ckpt.unlink(missing_ok=True)  # the phase is complete; the encoder and rows hold everything
    ctx.accelerator.wait_for_everyone()  # the other ranks load this encoder next
    return out


def _encoder_state(ctx: Context, model: MultiTaskModel) -> Optional[dict]:
    """Under FSDP the encoder holds parameter shards: its full state dict, gathered to rank 0 (every rank
    takes part); otherwise None, and the encoder saves its own."""
    if not ctx.fsdp:
        return None
    state = parallel.full_model_state(model)
    return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}


def _own_dev_languages(cfg: ExperimentConfig, spec: TaskSpec) -> tuple[str, ...]:
    """Languages besides English whose dev split an intermediate task with text of its own in several
    languages (mlm) is scored on. Translated tasks have no translated dev sets: none."""
    if spec.train_task or not translated.applies(spec):
        return ()
    langs = translated.languages(spec, cfg.intermediate.task_options.get(spec.name))
    return tuple(lang for lang in langs if lang != "en")


def _dev_sets(cfg: ExperimentConfig, task: TaskData, tokenizer: Any):
    """(language, examples, features) to record after intermediate training: the English dev set that
    model selection used, then every other chosen language's (continued MLM: perplexity per language)."""
    yield "en", task.dev_examples, task.dev_features
    opts = cfg.intermediate.task_options.get(task.spec.name)
    for lang in _own_dev_languages(cfg, task.spec):
        examples = load_examples(task.spec, task.spec.dev_split, lang, cfg, opts)
        yield lang, examples, _features(cfg, task.spec, examples, tokenizer, task.hp.max_length)


# ---------------------------------------------------------------------------------------------------
# Phase 3


def encoder_source(cfg: ExperimentConfig) -> str:
    if cfg.xtreme.encoder:
        check_encoder_dir(cfg.xtreme.encoder)
        return cfg.xtreme.encoder
    if cfg.intermediate.tasks:
        enc = intermediate_dir(cfg) / "encoder"
        if not enc.exists():
            raise ValueError(f"no intermediate encoder at {enc}: run `stilts train-intermediate CONFIG` first, "
                             "or set xtreme.encoder=<dir or hub id> (e.g. xtreme.encoder=xlm-roberta-large for "
                             "the baseline)")
        check_encoder_dir(str(enc))
        return str(enc)
    return cfg.model.name


def check_encoder_dir(source: str) -> None:
    """A local encoder must be complete: a missing or half-copied directory fails here, clearly, instead
    of deep inside transformers (or, worse, by falling back to a hub download of a same-named model)."""
    path = Path(source).expanduser()
    looks_local = source.startswith(("/", ".", "~")) or path.exists()
    if not looks_local:
        return  # a hub id
    if not path.is_dir():
        raise ValueError(f"encoder directory {path} does not exist; train-intermediate writes it to "
                         "<run_dir>/intermediate/encoder")
    missing = [name for name, found in [
        ("config.json", (path / "config.json").is_file()),
        ("model weights (*.safetensors or *.bin)", any(path.glob("*.safetensors")) or any(path.glob("*.bin")))]
        if not found]
    if missing:
        raise ValueError(f"encoder directory {path} is incomplete (no {', '.join(missing)}); rerun "
                         "`stilts train-intermediate` for it, or point xtreme.encoder at a complete directory")


def finished(ctx: Context, spec: TaskSpec) -> set[tuple[str, str]]:
    return {(r["language"], r["split"]) for r in read_rows(ctx.results)
            if r.get("phase") == "xtreme" and r.get("task") == spec.name and r.get("seed") == ctx.cfg.seed
            and r.get("config_hash") == ctx.config_hash}


def eval_xtreme(ctx: Context) -> None:
    cfg = ctx.cfg
    source = encoder_source(cfg)
    for name in cfg.xtreme.tasks:
        spec = get_task(name)
        wanted = set(wanted_results(cfg, spec))
        if wanted <= finished(ctx, spec):
            ctx.accelerator.print(f"{name}: all {len(wanted)} results already in {ctx.results}; skipping")
            continue
        runner = getattr(family_of(spec), "run_target", None) or fine_tune_target
        runner(ctx, spec, source)


def fine_tune_target(ctx: Context, spec: TaskSpec, source: str) -> None:
    """Fresh head, train on English, select on English dev, evaluate every language zero-shot."""
    cfg = ctx.cfg
    tok_source = tokenizer_source(cfg.model) if source.startswith("tiny:") else (cfg.model.tokenizer or source)
    tokenizer = load_tokenizer(tok_source)
    train_spec = get_task(spec.train_task) if spec.train_task else spec
    opts = cfg.xtreme.task_options.get(spec.name)
    hp = merge_train(spec.train, cfg.xtreme.train, cfg.xtreme.task_overrides.get(spec.name))
    train_ex = _train_examples(train_spec, cfg, None if spec.train_task else opts)
    if spec.train_task:  # the volume cap set on the target still applies to its borrowed training data
        train_ex = subsample(train_ex, opts, cfg.seed)
    spec = _fit_labels(spec, train_ex)
    dev_ex = load_examples(train_spec, train_spec.dev_split, "en", cfg, None if spec.train_task else opts)
    task = TaskData(spec, hp, _features(cfg, spec, train_ex, tokenizer, hp.max_length), dev_ex,
                    _features(cfg, spec, dev_ex, tokenizer, hp.max_length))
    log.info("%s: training on %d %s examples", spec.name, len(train_ex), train_spec.name)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    model = set_dropout(MultiTaskModel(load_encoder(source, cfg.model, tokenizer), [spec]), cfg.model.dropout)
    ckpt = ctx.run_dir / "xtreme" / spec.name / "checkpoint.pt"
    with ctx.tracker(f"xtreme-{spec.name}") as tracker:
        # One task, its whole training set each epoch: the intermediate phase's sampler (a capped one cuts
        # every epoch to `cap` examples) is not the target recipe's.
        result = train(model, [task], hp, SamplerConfig(), ctx.accelerator, tokenizer.pad_token_id,
                       cfg.seed, cfg.bf16, desc=f"xtreme {spec.name}", checkpoint_path=ckpt, speed=cfg.speed,
                       tracker=tracker, fsdp=ctx.fsdp)
    model = ctx.accelerator.unwrap_model(model).to(ctx.accelerator.device)
    done = finished(ctx, spec)
    batch = (hp.micro_batch_size or hp.batch_size) * 2
    todo = [pair for pair in wanted_results(cfg, spec) if pair not in done]

    def one(lang: str, split: str) -> tuple:
        examples = load_examples(spec, split, lang, cfg, opts)
        features = _features(cfg, spec, examples, tokenizer, hp.max_length)
        return (lang, split, examples, *evaluate(model, spec, examples, features, lang, batch, ctx.accelerator.device,
                                                 tokenizer.pad_token_id, cfg.bf16))

    # A family that scores every language against one shared pool (dual encoders) yields the same tuples.
    score_all = getattr(family_of(spec), "evaluate_languages", None)
    scored = score_all(ctx, spec, model, tokenizer, hp, todo) if score_all else (one(*pair) for pair in todo)
    for lang, split, examples, scores, predictions in scored:
        if ctx.accelerator.is_main_process:
            write_predictions(ctx.run_dir, spec.name, split, lang, predictions, examples)
            append_rows(ctx.results, metric_rows(ctx.row_base(
                "xtreme", spec.name, language=lang, split=split, encoder=source,
                train_task=train_spec.name, best_step=result.best_step), scores))
        ctx.accelerator.print(f"{spec.name} {lang} {split}: {format_metrics(scores)}")
    if ctx.accelerator.is_main_process:
        ckpt.unlink(missing_ok=True)  # every language is scored; a rerun skips this target


def summary(ctx: Context) -> str:
    """A task x language table of each task's selection metric, from this config's rows."""
    rows = [r for r in read_rows(ctx.results) if r.get("phase") == "xtreme" and r.get("config_hash") == ctx.config_hash
            and r.get("seed") == ctx.cfg.seed]
    lines = []
    for split in ctx.cfg.xtreme.splits:
        for name in ctx.cfg.xtreme.tasks:
            metric = get_task(name).metric
            values = {r["language"]: r["value"] for r in rows
                      if r["task"] == name and r["split"] == split and r["metric"] == metric}
            if not values:
                continue
            langs = [lang for lang in target_languages(ctx.cfg, get_task(name)) if lang in values]
            avg = sum(values[lang] for lang in langs) / len(langs)
            lines.append(f"\n{name} {split} {metric}")
            lines.append("| " + " | ".join(langs + ["avg"]) + " |")
            lines.append("|" + "---|" * (len(langs) + 1))
            lines.append("| " + " | ".join(f"{values[lang]:.1f}" for lang in langs) + f" | {avg:.1f} |")
    for split in ctx.cfg.xtreme.splits:
        scores = {}
        for name in ctx.cfg.xtreme.tasks:
            per_lang: dict[str, dict[str, float]] = {}
            for r in rows:
                if r["task"] == name and r["split"] == split:
                    per_lang.setdefault(r["language"], {})[r["metric"]] = r["value"]
            if per_lang and name in metrics.BENCHMARK_TASKS[ctx.cfg.xtreme.benchmark]:
                try:
                    scores[name] = metrics.task_average(per_lang, name, ctx.cfg.xtreme.qa_score)
                except ValueError:  # no score for this split (BUCC test without gold: predicted pairs only)
                    continue
        if scores:
            bench = ctx.cfg.xtreme.benchmark
            label, count = {"xtreme": ("XTREME", "nine"), "xtreme-r": ("XTREME-R", "ten")}[bench]
            overall = metrics.benchmark_score(scores, bench)
            lines.append(f"\n{label} task scores ({split}, QA as {ctx.cfg.xtreme.qa_score}): "
                         + ", ".join(f"{t} {v:.1f}" for t, v in scores.items()))
            lines.append(f"{label} score: {overall:.1f}" if overall is not None
                         else f"{label} score: needs all {count} tasks")
            partial = []
            for t in scores:
                have = {r["language"] for r in rows if r["task"] == t and r["split"] == split}
                full = set(benchmark_languages(t, split))
                if not full <= have:
                    partial.append(f"{t} {len(full & have)}/{len(full)}")
            if partial:
                lines.append(f"(over fewer languages than {label}'s: {', '.join(partial)})")
    return "\n".join(lines) or "no XTREME results yet"
