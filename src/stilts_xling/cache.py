"""Tokenized-feature cache. MNLI's 393k pairs take about a minute to tokenize; every target that trains on
MNLI (XNLI) and every rerun would pay it again.

The key covers everything the features depend on: the examples themselves, the tokenizer (its full
serialized definition, not just its name), the task spec, the max length, and the source code of the
family and of this package's version, so a stale cache can never be reused after any of them changes.
Entries are written to a temp file and renamed, so a crash leaves no half-written entry."""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Optional

from . import __version__

log = logging.getLogger(__name__)


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stilts_xling" / "features"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([type(tokenizer).__name__, tokenizer.model_max_length, tokenizer.padding_side,
                        tokenizer.truncation_side], default=str)
    return hashlib.sha256((text + extra).encode()).hexdigest()


def _code_fingerprint(family: Any) -> str:
    source = inspect.getsource(type(family)) + inspect.getsource(inspect.getmodule(type(family)))
    return hashlib.sha256((__version__ + source).encode()).hexdigest()


def cache_key(spec: Any, family: Any, examples: list[dict], tokenizer: Any, max_length: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(examples, sort_keys=True, ensure_ascii=False, default=str).encode())
    h.update(repr(spec).encode())
    h.update(str(max_length).encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(_code_fingerprint(family).encode())
    return h.hexdigest()[:32]


def cached_features(cache_dir: Optional[Path], spec: Any, family: Any, examples: list[dict], tokenizer: Any,
                    max_length: int, build: Callable[[], list[dict]]) -> list[dict]:
    """`build()`'s result, from the cache when an entry with the same key exists."""
    if cache_dir is None:
        return build()
    path = Path(cache_dir) / f"{spec.name}-{cache_key(spec, family, examples, tokenizer, max_length)}.pkl"
    if path.is_file():
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError) as err:  # corrupt entry: rebuild it
            log.warning("ignoring unreadable feature cache %s (%s)", path, err)
    features = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            pickle.dump(features, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    except OSError as err:  # a full or read-only disk must not stop training
        log.warning("could not write the feature cache %s (%s)", path, err)
    return features
