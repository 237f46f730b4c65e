"""Value checks of a config whose types are already right: task names and phases, languages, numeric
ranges, and option combinations (FSDP's among them). `load_config` runs them beside the type checks and
reports everything together.
"""
from __future__ import annotations

import json
import math
from typing import Any

from .config import ExperimentConfig, SpeedConfig, _suggest
from .languages import XTREME_R_LANGUAGES

# Speed options that FSDP cannot run with, and why (rundir.start checks them too, for --use_fsdp).
_NOT_WITH_FSDP = {
    "cuda_graphs": "a captured graph cannot hold FSDP's per-block all-gathers and reduce-scatters",
    "compile": "compiled blocks are not checked against FSDP's per-block hooks",
    "flat_adamw": "FSDP's parameters are shards (DTensors), which cannot live in one flat buffer",
    "lazy_embedding": "the deferred rows live in flat_adamw's buffers",
    # Every rank must run the same forward passes, or their all-gathers pair up wrongly.
    "token_budget": "each process splits its own share of a micro batch by tokens, so processes could run "
                    "different numbers of forward passes",
}


def fsdp_problems(cfg: ExperimentConfig) -> list[str]:
    """The speed options set in `cfg` that FSDP cannot run with, each naming its key and its default."""
    defaults = SpeedConfig()
    return [f"speed.{key}: cannot be combined with FSDP (distributed.strategy fsdp or accelerate launch "
            f"--use_fsdp): {why}; set speed.{key}: {json.dumps(getattr(defaults, key))}"
            for key, why in _NOT_WITH_FSDP.items() if getattr(cfg.speed, key) != getattr(defaults, key)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_values(cfg: ExperimentConfig, errors: list[str]) -> None:
    """Append to `errors` what is wrong with the values; a value of the wrong type was already reported
    and holds its default here."""
    from .tasks import registry

    def check_tasks(names: list[str], key: str, phase: str) -> None:
        first: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in first:  # one head and one results row per task: a repeat would train it twice as often
                errors.append(f"{key}[{i}]: {name!r} is listed twice (also at {key}[{first[name]}]); list it once "
                              "(intermediate.sampler sets how often a task is drawn)")
                continue
            first[name] = i
            try:
                spec = registry.get_task(name)
            except KeyError as err:
                errors.append(f"{key}[{i}]: {err.args[0]}")
                continue
            if phase not in spec.phases:
                errors.append(f"{key}[{i}]: {name!r} is not a task of the {phase} phase (it belongs to: "
                              f"{', '.join(spec.phases)})")

    # A task list of the wrong type fell back to its default: tables keyed by task cannot be checked
    # against it without naming tasks the user did configure.
    mistyped = {key for key in ("intermediate.tasks", "xtreme.tasks") if any(e.startswith((f"{key}:", f"{key}["))
                                                                          for e in errors)}
    check_tasks(cfg.intermediate.tasks, "intermediate.tasks", "intermediate")
    check_tasks(cfg.xtreme.tasks, "xtreme.tasks", "xtreme")
    for key, table, allowed, tasks_key in [
        ("intermediate.task_options", cfg.intermediate.task_options, cfg.intermediate.tasks, "intermediate.tasks"),
        ("xtreme.task_options", cfg.xtreme.task_options, cfg.xtreme.tasks, "xtreme.tasks"),
        ("xtreme.task_overrides", cfg.xtreme.task_overrides, cfg.xtreme.tasks, "xtreme.tasks"),
        ("xtreme.languages", cfg.xtreme.languages, cfg.xtreme.tasks, "xtreme.tasks"),
    ]:
        for name in table if tasks_key not in mistyped else ():
            if name not in allowed:
                errors.append(f"{key}.{name}: {name!r} is not among the configured tasks{_suggest(name, allowed)}")
    for name, langs in cfg.xtreme.languages.items():
        if name in registry.TASKS:
            # XTREME-R adds languages to some targets (lt, pl, uk, ... for UD-POS and PAN-X)
            known = tuple(dict.fromkeys(registry.TASKS[name].languages + XTREME_R_LANGUAGES.get(name, ())))
            for lang in langs:
                if lang not in known:
                    errors.append(f"xtreme.languages.{name}: {lang!r} is not a {name} language "
                                  f"(choose from {', '.join(known)}){_suggest(lang, known)}")
    for key, train in [("intermediate.train", cfg.intermediate.train), ("xtreme.train", cfg.xtreme.train),
                       *((f"xtreme.task_overrides.{k}", v) for k, v in cfg.xtreme.task_overrides.items())]:
        for fname in ("epochs", "lr", "batch_size", "micro_batch_size", "max_length", "max_steps"):
            value = getattr(train, fname)
            if _number(value) and value <= 0:
                errors.append(f"{key}.{fname}: must be positive, got {value}")
        for fname in ("weight_decay", "max_grad_norm", "eval_every", "eval_subset", "patience", "checkpoint_every"):
            value = getattr(train, fname)
            if _number(value) and value < 0:
                errors.append(f"{key}.{fname}: must be 0 or more, got {value}")
        for fname in ("epochs", "lr", "weight_decay", "warmup", "max_grad_norm"):
            value = getattr(train, fname)
            if _number(value) and not math.isfinite(value):
                errors.append(f"{key}.{fname}: must be a finite number, got {value}")
        if _number(train.max_length) and 0 < train.max_length < 8:
            errors.append(f"{key}.max_length: {train.max_length} tokens leave no room for text beside the special "
                          "tokens; use 8 or more")
        if isinstance(train.warmup, float) and not 0 <= train.warmup < 1:
            errors.append(f"{key}.warmup: a fraction of the steps in [0, 1), got {train.warmup}")
        if (isinstance(train.batch_size, int) and isinstance(train.micro_batch_size, int)
                and train.micro_batch_size > 0 and train.batch_size % train.micro_batch_size):
            errors.append(f"{key}: batch_size {train.batch_size} is not a multiple of micro_batch_size "
                          f"{train.micro_batch_size}")
    for key, options in [*((f"intermediate.task_options.{k}", v) for k, v in cfg.intermediate.task_options.items()),
                         *((f"xtreme.task_options.{k}", v) for k, v in cfg.xtreme.task_options.items())]:
        if options.train_fraction is not None and not 0 < options.train_fraction <= 1:
            errors.append(f"{key}.train_fraction: must be in (0, 1], got {options.train_fraction}")
        if _number(options.max_train_examples) and options.max_train_examples < 1:
            errors.append(f"{key}.max_train_examples: must be at least 1, got {options.max_train_examples}")
    sampler = cfg.intermediate.sampler
    if _number(sampler.temperature) and not (math.isfinite(sampler.temperature) and sampler.temperature > 0):
        errors.append(f"intermediate.sampler.temperature: must be a positive number, got {sampler.temperature}")
    if _number(sampler.cap) and sampler.cap < 1:
        errors.append(f"intermediate.sampler.cap: must be at least 1, got {sampler.cap}")
    from . import translated  # imports data.py, which imports this module

    for name, options in cfg.intermediate.task_options.items():
        if options.languages is not None and name in registry.TASKS:
            errors += [f"intermediate.task_options.{name}.languages: {problem}"
                       for problem in translated.option_problems(registry.TASKS[name], options.languages)]
    for name, options in cfg.xtreme.task_options.items():
        if options.languages is not None:
            errors.append(f"xtreme.task_options.{name}.languages: targets choose languages with "
                          f"xtreme.languages.{name}")
    sp = cfg.speed
    if sp.pad_multiple < 1:
        errors.append(f"speed.pad_multiple: must be at least 1, got {sp.pad_multiple}")
    if sp.token_budget is not None and sp.token_budget <= 0:
        errors.append(f"speed.token_budget: must be positive, got {sp.token_budget}")
    if sp.workers < 0:
        errors.append(f"speed.workers: must be 0 or more, got {sp.workers}")
    if sp.bucket_steps < 1:
        errors.append(f"speed.bucket_steps: must be at least 1, got {sp.bucket_steps}")
    if any(b <= 0 for b in sp.buckets):
        errors.append(f"speed.buckets: lengths must be positive, got {sp.buckets}")
    if sp.cuda_graphs and not sp.unpadded:
        errors.append("speed.cuda_graphs: needs speed.unpadded: true (graphs are captured over packed rows)")
    if sp.fused_wgrad and not sp.cuda_graphs:
        errors.append("speed.fused_wgrad: needs speed.cuda_graphs: true (weight gradients that bypass autograd need "
                      "the single-process graph run, whose .grad tensors stay in place)")
    if sp.lazy_embedding and not sp.flat_adamw:
        errors.append("speed.lazy_embedding: needs speed.flat_adamw: true (the deferred rows live in its buffers)")
    if sp.attention != "flash" and not sp.unpadded:
        errors.append(f"speed.attention: {sp.attention} needs speed.unpadded: true (it is the packed rows' kernel; "
                      "padded batches take SDPA's own choice)")
    if cfg.distributed.strategy == "fsdp":
        errors += fsdp_problems(cfg)
    for key in ("k", "batch_size", "max_length"):
        if getattr(cfg.retrieval, key) <= 0:
            errors.append(f"retrieval.{key}: must be positive, got {getattr(cfg.retrieval, key)}")
    if cfg.model.dropout is not None and not 0 <= cfg.model.dropout < 1:
        errors.append(f"model.dropout: a probability in [0, 1), got {cfg.model.dropout}")
    if cfg.retrieval.layer_fraction is not None and not 0 <= cfg.retrieval.layer_fraction <= 1:
        errors.append(f"retrieval.layer_fraction: a fraction of the depth in [0, 1], got {cfg.retrieval.layer_fraction}")
    if cfg.model.name.startswith("tiny:"):
        from .model import TINY_ARCHITECTURES

        arch = cfg.model.name[len("tiny:"):]
        if arch not in TINY_ARCHITECTURES:
            errors.append(f"model.name: unknown tiny architecture {arch!r} (choose from "
                          f"{', '.join(TINY_ARCHITECTURES)}){_suggest(arch, TINY_ARCHITECTURES)}")
