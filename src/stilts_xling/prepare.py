"""Fetch everything a config needs into the local Hugging Face caches (`stilts prepare`, run on a machine
with network access), and list what an offline run would lack (`offline_problems`), so that a job on an
offline cluster fails at start-up with the whole list instead of hours in with the first missing item.

What a config needs mirrors the pipeline: `model.name` (weights, or only its config with
`model.random_init`), the tokenizer (`model.tokenizer` or the model's), `xtreme.encoder` when it is a hub id,
and, with `data_source: hub`, every (dataset, config, split) that `data._load_hub` would load. `tiny:`
models, the bundled tokenizer and local directories need nothing. With `data_source: files` the original
downloads cannot be fetched automatically; their absence is reported as `stilts validate` does."""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator, Optional

from .config import ExperimentConfig
from .data import _format  # the one place that knows how {lang}/{lang3}/{Lang} fill hub names
from .pipeline import check_data, target_languages
from .tasks.base import TaskSpec
from .tasks.registry import family_of, get_task

PHASES = ("intermediate", "xtreme")
# Any one of the files in a tuple is enough: repos ship safetensors or .bin weights, sharded or not, and
# tokenizers as tokenizer.json or a sentencepiece/wordpiece vocabulary.
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model", "spiece.model", "vocab.txt")
_CACHED_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "model": (("config.json",), _WEIGHTS),
    "config": (("config.json",),),
    "tokenizer": (_TOKENIZER,),
}
HubItem = tuple[str, Optional[str], str, Optional[str]]  # (dataset path, config name, split expression, revision)


def is_hub_id(name: str) -> bool:
    """True for "xlm-roberta-large" or "org/model"; False for tiny: models and local paths. A path that
    does not exist yet (an encoder a run will write) is recognised by a leading ./ / ~ or extra slashes."""
    if name.startswith("tiny:") or Path(name).expanduser().exists():
        return False
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1


def needed_models(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """(kind, hub id) pairs, kind one of _CACHED_FILES; tiny: and local models left out."""
    weights = "config" if cfg.model.random_init else "model"
    items = [(weights, cfg.model.name), ("tokenizer", cfg.model.tokenizer or cfg.model.name)]
    if cfg.xtreme.encoder:  # fine_tune_target takes the tokenizer from the encoder unless model.tokenizer is set
        items += [(weights, cfg.xtreme.encoder), ("tokenizer", cfg.model.tokenizer or cfg.xtreme.encoder)]
    return [(kind, name) for kind, name in dict.fromkeys(items) if is_hub_id(name)]


def needed_datasets(cfg: ExperimentConfig) -> tuple[list[HubItem], list[str]]:
    """Every (path, name, split) a `data_source: hub` run loads, and the tasks/splits with no hub source."""
    wanted: list[tuple[TaskSpec, str, str]] = []
    for name in cfg.intermediate.tasks:
        spec = get_task(name)
        wanted += [(spec, "train", "en"), (spec, spec.dev_split, "en")]
        wanted += [(get_task(extra), "train", "en") for extra in spec.extra_train]
    for name in cfg.xtreme.tasks:
        spec = get_task(name)
        source = get_task(spec.train_task) if spec.train_task else spec
        if family_of(spec).name != "retrieval":  # BUCC and Tatoeba are not fine-tuned
            wanted += [(source, "train", "en"), (source, source.dev_split, "en")]
        # As eval_xtreme: a split the task's original files lack is not evaluated at all.
        wanted += [(spec, split, lang) for lang in target_languages(cfg, spec) for split in cfg.xtreme.splits
                   if spec.files is None or split in spec.files.splits]
    items, problems = [], []
    for spec, split, lang in wanted:
        if spec.hub is None or split not in spec.hub.splits:
            problems.append(f"{spec.name} {split}: no hub source for this split; use data_source: files")
            continue
        items.append((spec.hub.path, _format(spec.hub.name, lang) if spec.hub.name else None,
                      _format(spec.hub.splits[split], lang), spec.hub.revision))
    return list(dict.fromkeys(items)), list(dict.fromkeys(problems))


def _describe(item: HubItem) -> str:
    path, name, split, revision = item
    return f"dataset {path}{f'@{revision}' if revision else ''}{f' [{name}]' if name else ''} split {split}"


def _revision(item: HubItem) -> dict:
    return {"revision": item[3]} if item[3] else {}


def _first_line(err: Exception) -> str:
    # transformers' connection errors run to several lines of advice; the first says what failed.
    return f"{err.__class__.__name__}: {(str(err).splitlines() or [''])[0]}"


def prepare(cfg: ExperimentConfig) -> list[str]:
    """Download and cache every model and hub dataset `cfg` needs, printing each; returns the problems
    (items that could not be fetched, missing original files), empty when everything is in place."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    loaders = {"model": AutoModel.from_pretrained, "config": AutoConfig.from_pretrained,
               "tokenizer": AutoTokenizer.from_pretrained}
    problems = []
    for kind, name in needed_models(cfg):
        try:
            loaders[kind](name)
            print(f"cached {kind} {name}")
        except Exception as err:  # hub/network/auth errors come in many types; each is one line to report
            problems.append(f"{kind} {name}: could not fetch ({_first_line(err)})")
    if cfg.data_source == "files":
        return problems + check_data(cfg, PHASES)
    import datasets

    items, no_source = needed_datasets(cfg)
    for item in items:
        try:
            datasets.load_dataset(item[0], item[1], split=item[2], **_revision(item))
            print(f"cached {_describe(item)}")
        except Exception as err:
            problems.append(f"{_describe(item)}: could not fetch ({_first_line(err)})")
    return problems + no_source


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Force offline mode for the duration of a cache probe, whatever the environment says, so a check
    never waits on the network. Both flags are read at call time by the libraries."""
    import datasets
    import huggingface_hub

    saved = huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _split_names(expression: str) -> list[str]:
    # "train_r1+train_r2[:10%]" -> ["train_r1", "train_r2"]: datasets' split arithmetic and slicing.
    return [re.sub(r"\[.*\]$", "", part).strip() for part in expression.split("+")]


def offline_problems(cfg: ExperimentConfig, phases: tuple[str, ...] = PHASES) -> list[str]:
    """Everything `cfg` needs that is not in the local caches (or, for data_source: files, on disk)."""
    from huggingface_hub import try_to_load_from_cache

    hint = "run `stilts prepare CONFIG` on a machine with network access (same HF_HOME)"
    problems = []
    for kind, name in needed_models(cfg):
        for alternatives in _CACHED_FILES[kind]:
            # try_to_load_from_cache returns a path (str) only for a file present in the cache.
            if not any(isinstance(try_to_load_from_cache(name, f), str) for f in alternatives):
                problems.append(f"{kind} {name}: {' or '.join(alternatives)} not in the HF cache; {hint}")
                break
    if cfg.data_source == "files":
        return problems + check_data(cfg, phases)
    import datasets

    items, no_source = needed_datasets(cfg)
    with _offline():
        for item in items:
            try:
                splits = datasets.load_dataset_builder(item[0], item[1], **_revision(item)).info.splits or {}
            except Exception as err:  # "not cached" surfaces as ConnectionError, FileNotFoundError, ValueError
                problems.append(f"{_describe(item)}: not in the datasets cache ({err.__class__.__name__}); {hint}")
                continue
            lacking = [s for s in _split_names(item[2]) if s not in splits]
            if lacking:
                problems.append(f"{_describe(item)}: cached without split(s) {', '.join(lacking)}; {hint}")
    return problems + no_source
