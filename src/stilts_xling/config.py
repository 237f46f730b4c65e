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
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


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
    from .config_checks import check_values  # imported here: it imports this module's dataclasses

    check_values(cfg, errors)  # wrongly typed values were left at their defaults
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
