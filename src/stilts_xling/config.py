"""Typed experiment configuration: YAML -> dataclasses, strictly.

`load_config(path, overrides)` reports every problem at once (unknown keys with a did-you-mean, wrong
types, bad values, unknown task names), each naming its key path, and raises `ConfigError`. Relative
paths in a config are resolved against the current directory, like any command-line tool.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .languages import XTREME_R_LANGUAGES


class ConfigError(ValueError):
    """A user error in a config file or override; `problems` lists every one found."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the config:\n{lines}")


@dataclass
class ModelConfig:
    # A hub id or local directory for AutoModel/AutoTokenizer, or "tiny:<architecture>" for a small
    # random model with the bundled tokenizer (offline runs, tests, CI).
    name: str = "xlm-roberta-large"
    tokenizer: Optional[str] = None  # defaults to `name`
    tiny_layers: int = 2
    tiny_hidden: int = 32
    tiny_heads: int = 2
    # Random-init weights of the named architecture (benchmarks without a checkpoint download).
    random_init: bool = False
    # How a sequence becomes one vector for pooled heads (architectures.py): "auto" = first token for
    # encoders, last real token for decoder-only models and a seq2seq decoder, mean of the real tokens
    # for a seq2seq encoder side.
    pooling: Literal["auto", "first", "last", "mean"] = "auto"
    # Encoder-decoders (T5, mT5): the encoder side only (T5EncoderModel), or the decoder's states.
    seq2seq_side: Literal["encoder", "decoder"] = "encoder"
    # Override every dropout probability (encoder and heads); None keeps the checkpoint's (0.1 for XLM-R).
    dropout: Optional[float] = None


@dataclass
class TrainConfig:
    """Fine-tuning hyperparameters. `None` means: the task's default from the registry (facts.md 1.6)."""

    epochs: Optional[float] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None  # effective batch (examples per optimizer step)
    micro_batch_size: Optional[int] = None  # per forward pass; batch_size / micro = accumulation steps
    max_length: Optional[int] = None
    weight_decay: Optional[float] = None
    warmup: Optional[float] = None  # fraction of the total steps
    max_grad_norm: Optional[float] = None
    max_steps: Optional[int] = None  # stop after this many optimizer steps (smoke runs, debugging)
    eval_every: Optional[int] = None  # optimizer steps between dev evaluations; 0 = once per epoch
    eval_subset: Optional[int] = None  # dev examples used for model selection; 0 = all
    patience: Optional[int] = None  # evaluations without improvement before stopping; 0 = never stop
    checkpoint_every: Optional[int] = None  # optimizer steps between resumable checkpoints; 0 = at each evaluation


TRAIN_DEFAULTS = TrainConfig(
    epochs=3, lr=1e-5, batch_size=32, micro_batch_size=None, max_length=256, weight_decay=0.01,
    warmup=0.1, max_grad_norm=1.0, max_steps=None, eval_every=1000, eval_subset=500, patience=30,
    checkpoint_every=0,
)


def merge_train(*layers: Optional[TrainConfig]) -> TrainConfig:
    """Later layers win where they set a value (defaults < task spec < config < per-task override)."""
    out = dataclasses.replace(TRAIN_DEFAULTS)
    for layer in layers:
        if layer is None:
            continue
        for f in dataclasses.fields(TrainConfig):
            value = getattr(layer, f.name)
            if value is not None:
                setattr(out, f.name, value)
    return out


@dataclass
class TaskOptions:
    max_train_examples: Optional[int] = None  # cap on training examples (data-volume studies)
    train_fraction: Optional[float] = None  # or a fraction of them, taken after a seeded shuffle
    data_dir: Optional[str] = None  # this task's files, if not under <data_dir>/<task's folder>
    # Translated intermediate tasks (mnli_mt, squad_mt): the languages to train on, "en" meaning the English
    # original; default every translation (translated.py).
    languages: Optional[list[str]] = None


@dataclass
class SamplerConfig:
    kind: Literal["proportional", "uniform", "capped", "temperature"] = "proportional"
    cap: Optional[int] = None  # examples cap for "capped" (jiant's train_examples_cap)
    temperature: float = 2.0  # p ~ n^(1/T) for "temperature"


@dataclass
class IntermediateConfig:
    tasks: list[str] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    task_options: dict[str, TaskOptions] = field(default_factory=dict)


@dataclass
class XtremeConfig:
    # Encoder to fine-tune: a directory or hub id. Default: the run's intermediate encoder when
    # intermediate tasks are configured, else model.name (the baseline).
    encoder: Optional[str] = None
    tasks: list[str] = field(default_factory=lambda: ["xnli"])
    languages: dict[str, list[str]] = field(default_factory=dict)  # per-task subset; default: all
    splits: list[Literal["dev", "test"]] = field(default_factory=lambda: ["dev"])
    train: TrainConfig = field(default_factory=TrainConfig)
    task_overrides: dict[str, TrainConfig] = field(default_factory=dict)
    task_options: dict[str, TaskOptions] = field(default_factory=dict)
    qa_score: Literal["em_f1", "f1"] = "em_f1"  # how QA enters the XTREME score (evaluate.py: em_f1)
    # Which benchmark's language lists are the default (XTREME-R adds languages to UD-POS, PAN-X, Tatoeba
    # and XQuAD) and which overall score the summary prints.
    benchmark: Literal["xtreme", "xtreme-r"] = "xtreme"


@dataclass
class RetrievalConfig:
    """BUCC and Tatoeba: sentence embeddings straight from the encoder, no fine-tuning (facts.md 1.7)."""

    layer: Optional[int] = None  # hidden_states index (0 = embeddings, negative = from the top); None = 14/24 of depth
    layer_fraction: Optional[float] = None  # or a fraction of the depth, for models of other sizes
    pooling: Literal["mean", "cls"] = "mean"
    protocol: Literal["margin", "cosine"] = "margin"  # BUCC: ratio margin (XTREME) or plain cosine NN (MTEB)
    k: int = 4  # margin neighbourhood
    layer_sweep: bool = False  # also score every layer from the same encoding pass
    batch_size: int = 64
    max_length: int = 512


@dataclass
class SpeedConfig:
    """How batches are built and run (speed.py); the defaults are the plain padded loop. Results do not
    depend on these, up to floating-point summation order."""

    unpadded: bool = False  # pack each micro batch's real tokens into one row; attention stays per sequence
    token_budget: Optional[int] = None  # max tokens per micro batch (packed: real tokens; padded: rows x longest)
    cuda_graphs: bool = False  # replay the encoder's forward+backward as CUDA graphs (CUDA, needs unpadded)
    compile: bool = False  # torch.compile each encoder layer (regional; two compilations, then none)
    buckets: list[int] = field(default_factory=list)  # packed lengths to pad up to; empty = automatic
    bucket_steps: int = 16  # automatic buckets per power of two: 16 = at most 6.25% padding
    workers: int = 0  # background threads that collate batches ahead of the loop; 0 = inline
    # Padded batches: widths rounded up to a multiple of this. Fewer distinct widths mean fewer per-shape
    # start-ups (cuDNN attention plans, cuBLAS heuristics) at the cost of some padding; 8 suits tensor cores.
    pad_multiple: int = 8
    # AdamW over flat buffers (flat_adamw.py): one norm and one Triton kernel per step instead of ~34
    # multi-tensor launches plus separate zeroing; same maths and checkpoint format as torch's AdamW.
    flat_adamw: bool = False
    # With flat_adamw: word-embedding rows take AdamW's steps when a batch looks them up, replaying the steps
    # they missed (lazy_rows.py); the same maths without a pass over the whole 250k-row matrix every step.
    lazy_embedding: bool = False
    # With cuda_graphs: linear layers accumulate weight gradients into the fp32 .grad inside the GEMM
    # (into_grad.py), saving a cast and an add kernel per weight per micro batch.
    fused_wgrad: bool = False
    # With unpadded on CUDA: the varlen attention kernel of packed rows. flash: flash-attention 2; cudnn: cuDNN's
    # fused attention, whose smaller tiles waste less on short sequences. Either is checked against SDPA once per
    # device (packing.self_test); one that fails gives way to flash, then to per-sequence padded SDPA.
    attention: Literal["flash", "cudnn"] = "flash"


@dataclass
class DistributedConfig:
    """How several processes (torchrun, accelerate launch) share the training; one process ignores it."""

    # ddp: every process holds the whole model and AdamW state, gradients are averaged. fsdp: parameters,
    # gradients and AdamW state are split across the processes (FSDP2, one unit per transformer block), for
    # models whose training state does not fit one GPU. auto: fsdp under `accelerate launch --use_fsdp`,
    # else ddp. Results are the same up to floating-point summation order (FSDP gathers fp32 parameters and
    # computes under the same bf16 autocast as DDP).
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"


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


def fsdp_problems(cfg: "ExperimentConfig") -> list[str]:
    """The speed options set in `cfg` that FSDP cannot run with, each naming its key and its default."""
    defaults = SpeedConfig()
    return [f"speed.{key}: cannot be combined with FSDP (distributed.strategy fsdp or accelerate launch "
            f"--use_fsdp): {why}; set speed.{key}: {json.dumps(getattr(defaults, key))}"
            for key, why in _NOT_WITH_FSDP.items() if getattr(cfg.speed, key) != getattr(defaults, key)]


@dataclass
class ExperimentConfig:
    run_dir: str = "runs/default"
    seed: int = 1
    data_dir: str = "data"  # root of the original downloads; each task has its own sub-folder
    data_source: Literal["files", "hub"] = "files"
    offline: bool = False  # never touch the network (also implied by HF_HUB_OFFLINE=1)
    tracking: Literal["tensorboard", "wandb", "none"] = "tensorboard"  # scalars per step (tracking.py)
    bf16: bool = True  # bf16 autocast when a CUDA device is present; ignored on CPU
    feature_cache: bool = True  # reuse tokenized features across runs (keyed by data, tokenizer, code)
    cache_dir: Optional[str] = None  # default: $XDG_CACHE_HOME/stilts_xling/features
    model: ModelConfig = field(default_factory=ModelConfig)
    intermediate: IntermediateConfig = field(default_factory=IntermediateConfig)
    xtreme: XtremeConfig = field(default_factory=XtremeConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


# ---------------------------------------------------------------------------------------------------
# Strict conversion of plain YAML data into the dataclasses above.

_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _convert(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], path, errors)
    if origin is Literal:
        if value not in args:
            errors.append(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}{_suggest(value, args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {_describe(value)}")
            return []
        return [_convert(v, args[0], f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {_describe(value)}")
            return {}
        return {str(k): _convert(v, args[1], f"{path}.{k}", errors) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _to_dataclass(value, tp, path, errors)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" as a string; accept it as the number the user meant.
            return float(value)
        except ValueError:
            pass
    if tp in _SCALARS and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        errors.append(f"{path}: expected {_SCALARS[tp]}, got {_describe(value)}")
    return value


def _to_dataclass(data: Any, cls: type, path: str, errors: list[str]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{path or 'top level'}: expected a mapping of keys, got {_describe(data)}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in names:
            errors.append(f"{key_path}: unknown key{_suggest(key, names)}")
            continue
        before = len(errors)
        converted = _convert(value, hints[key], key_path, errors)
        # A value of the wrong type keeps the field's default, so that the semantic checks can still run
        # over everything else and the user sees every problem at once. Nested sections keep what was
        # right in them: their own fields fall back one by one.
        if len(errors) == before or _holds_sections(hints[key]):
            kwargs[key] = converted
    return cls(**kwargs)


def _holds_sections(tp: Any) -> bool:
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return _holds_sections(inner[0])
    if typing.get_origin(tp) is dict:
        return dataclasses.is_dataclass(inner[-1])
    return dataclasses.is_dataclass(tp)


def _suggest(word: Any, options: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_values(cfg: ExperimentConfig, errors: list[str]) -> None:
    """Semantic checks that need the task registry; type checks already happened."""
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
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
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


# ---------------------------------------------------------------------------------------------------
# Loading, overrides, saving.


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError("override", [f"{text!r}: overrides look like key.sub=value (e.g. seed=2)"])
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _apply_override(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping: plain YAML keeps the last silently, so a
    second `tasks:` would quietly replace the first."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first at line {seen[key] + 1}); "
                    "keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(str(path), [f"config file not found: {path.resolve()}"])
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(str(path), [f"malformed YAML at {where}: {err.problem}; check the indentation "
                                      "and quoting there"]) from None
    except yaml.YAMLError as err:
        raise ConfigError(str(path), [f"malformed YAML: {err}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"the top level must be a mapping of keys, got {_describe(data)}"])
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    data = read_yaml(path)
    for text in overrides or []:
        keys, value = parse_override(text)
        _apply_override(data, keys, value)
    if isinstance(data.get("run_dir"), str) and data["run_dir"]:
        # "runs/x/" and "runs/x" are one run: the saved config is compared, and hashed, with the spelling
        data["run_dir"] = os.path.normpath(data["run_dir"])
    errors: list[str] = []
    cfg = _to_dataclass(data, ExperimentConfig, "", errors)
    _check_values(cfg, errors)  # wrongly typed values were left at their defaults
    if errors:
        raise ConfigError(str(path), errors)
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def identity(data: dict, defaults: Optional[dict] = None) -> dict:
    """The keys of a resolved config (as to_dict or a saved config.yaml gives it) whose values differ from
    the defaults. A key a newer version adds at its default leaves this unchanged, so runs started before
    it still compare equal and keep their hash (a run resumes instead of asking for --new-run)."""
    defaults = to_dict(ExperimentConfig()) if defaults is None else defaults
    out = {}
    for key, value in data.items():
        default = defaults.get(key, _MISSING)
        if type(value) is dict and type(default) is dict and default:  # a section: compare key by key
            inner = identity(value, default)
            if inner:
                out[key] = inner
        elif value != default:
            out[key] = value
    return out


_MISSING = object()


def hash_dict(data: dict) -> str:
    """config_hash of a resolved config given as plain data (a saved config.yaml)."""
    text = json.dumps(identity(data), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_hash(cfg: ExperimentConfig) -> str:
    """12 hex digits that name a config in results rows: the sha256 of its non-default values."""
    return hash_dict(to_dict(cfg))


def same_config(saved_text: str, cfg: ExperimentConfig) -> bool:
    """Whether a saved config.yaml describes `cfg` (differences only in keys left at their defaults, such as
    keys added by a newer version, do not count)."""
    try:
        saved = yaml.safe_load(saved_text) or {}
    except yaml.YAMLError:
        return False
    return type(saved) is dict and identity(saved) == identity(to_dict(cfg))


def dump_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
