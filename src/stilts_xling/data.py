"""Examples from the original files or the hub; features; length-grouped batches; collation."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Optional

import torch

from .config import ExperimentConfig, TaskOptions
from .languages import ISO639_3, LANGUAGE_NAMES
from .readers import READERS, DataError
from .tasks.base import TaskSpec

log = logging.getLogger(__name__)


def _format(template: str, lang: Optional[str]) -> str:
    lang = lang or "en"
    return template.format(lang=lang, lang3=ISO639_3.get(lang, lang), Lang=LANGUAGE_NAMES.get(lang, lang))


def task_dir(spec: TaskSpec, cfg: ExperimentConfig, options: Optional[TaskOptions] = None) -> Path:
    if options and options.data_dir:
        return Path(options.data_dir)
    return Path(cfg.data_dir) / spec.files.folder


def split_paths(spec: TaskSpec, split: str, lang: Optional[str], cfg: ExperimentConfig,
                options: Optional[TaskOptions] = None) -> list[Path]:
    """The file(s) holding one split; a tuple of paths in the spec means they are concatenated."""
    if spec.files is None or split not in spec.files.splits:
        raise DataError(f"task {spec.name!r} has no {split!r} split in its original files")
    entry = spec.files.splits[split]
    names = entry if isinstance(entry, tuple) else (entry,)
    root = task_dir(spec, cfg, options)
    paths = []
    for name in names:
        pattern = _format(name, lang)
        # Globs gather every treebank of a language (XTREME concatenates UD_English-EWT, -GUM, ...).
        matches = sorted(root.glob(pattern)) if "*" in pattern else []
        paths.extend(matches or [root / pattern])
    return paths


def missing_files(spec: TaskSpec, split: str, lang: Optional[str], cfg: ExperimentConfig,
                  options: Optional[TaskOptions] = None) -> list[str]:
    """Human-readable lines for each expected file that is absent (for `validate` and run start-up)."""
    if cfg.data_source == "hub" or spec.files is None or split not in spec.files.splits:
        return []
    entry = spec.files.splits[split]
    per_lang = lang and "{lang" in "".join(entry if isinstance(entry, tuple) else (entry,))
    out = []
    for path in split_paths(spec, split, lang, cfg, options):
        if not path.is_file():
            hint = spec.files.hint.replace("{dir}", str(task_dir(spec, cfg, options)))
            # A file shared by all languages (XNLI's tsv) is listed once, not once per language.
            out.append(f"{spec.name} {split}{f' [{lang}]' if per_lang else ''}: expected {path}; {hint}")
    return out


def load_examples(spec: TaskSpec, split: str, lang: Optional[str], cfg: ExperimentConfig,
                  options: Optional[TaskOptions] = None) -> list[dict]:
    if cfg.data_source == "hub":
        return _load_hub(spec, split, lang, cfg)
    missing = missing_files(spec, split, lang, cfg, options)
    if missing:
        raise DataError("missing data file:\n  " + "\n  ".join(missing))
    paths = split_paths(spec, split, lang, cfg, options)
    examples = []
    for path in paths:
        examples.extend(READERS[spec.files.reader](path, lang))
    if not examples:  # e.g. only license-withheld UD treebanks matched the glob
        raise DataError(f"{spec.name} {split} [{lang}]: no examples in {', '.join(map(str, paths))}")
    return unique_ids(examples, f"{spec.name} {split} [{lang}]")


def unique_ids(examples: list[dict], where: str) -> list[dict]:
    """Each example's id made unique ("<id>#2", "#3", ... for repeats), in place: predictions are keyed by
    id, so two examples sharing one would be scored with the same prediction. Concatenated files repeat ids:
    UD_Chinese-GSD and -GSDSimp both number their sentences dev-s1, dev-s2, ..."""
    taken = {str(ex["id"]) for ex in examples}
    if len(taken) == len(examples):
        return examples
    seen: dict[str, int] = {}
    renamed = 0
    for ex in examples:
        key = str(ex["id"])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            n = seen[key]
            while f"{key}#{n}" in taken:  # an id that already reads "<id>#2" keeps it
                n += 1
            ex["id"] = f"{key}#{n}"
            taken.add(ex["id"])
            renamed += 1
    if renamed:
        log.info("%s: %d examples repeat an earlier example's id; suffixed #2, #3, ... so each keeps its own "
                 "prediction", where, renamed)
    return examples


def _load_hub(spec: TaskSpec, split: str, lang: Optional[str], cfg: ExperimentConfig) -> list[dict]:
    import datasets

    hub = spec.hub
    if hub is None or split not in hub.splits:
        raise DataError(f"task {spec.name!r} has no hub source for split {split!r}; use data_source: files")
    name = _format(hub.name, lang) if hub.name else None
    try:
        ds = datasets.load_dataset(hub.path, name, split=_format(hub.splits[split], lang), **hub.revision_kwargs())
    except Exception as err:  # the hub raises many types; all mean "could not get it"
        raise DataError(f"could not load {hub.path}/{name} split {hub.splits[split]!r} from the hub ({err}); "
                        f"run `stilts prepare` online first, or use data_source: files") from err
    label_names = list(hub.label_names) if hub.label_names else _label_names(ds, hub.fields.get("label"))
    prefix = _format(hub.id_prefix, lang).lower() if hub.id_prefix else None
    # Families whose hub rows need more than column renames (letters as labels, nested choices,
    # integer tag ids) convert each row themselves.
    from .tasks.registry import family_of

    convert = getattr(family_of(spec), "hub_example", None)
    examples = []
    for i, row in enumerate(ds):
        if convert is not None:
            ex = convert(spec, row, i)
            if split == "train" and ex.get("label", 0) is None and ex.get("tags", 0) is None:
                continue
        else:
            ex = {key: _get(row, column) for key, column in hub.fields.items()}
        ex.setdefault("id", str(row.get("id", f"{split}-{i}")))
        if prefix and not str(ex["id"]).lower().startswith(prefix):
            continue
        if convert is None and label_names is not None and "label" in ex:
            if ex["label"] is None or ex["label"] < 0:  # unlabeled rows (MNLI test, SNLI "-")
                if split == "train":
                    continue
                ex["label"] = None
            else:
                ex["label"] = label_names[ex["label"]]
        examples.append(ex)
    if not examples:
        raise DataError(f"{hub.path}/{name} split {hub.splits[split]!r} gave no examples")
    return unique_ids(examples, f"{hub.path}/{name} {hub.splits[split]}")


def _label_names(ds: Any, column: Optional[str]) -> Optional[list[str]]:
    feature = ds.features.get(column) if column else None
    return list(feature.names) if hasattr(feature, "names") else None


def _get(row: dict, column: str) -> Any:
    for part in column.split("."):  # nested hub columns, e.g. "question.stem"
        row = row[part]
    return row


def subsample(examples: list[dict], options: Optional[TaskOptions], seed: int) -> list[dict]:
    """Data-volume control: a seeded random subset, identical across runs with the same seed."""
    if options is None or (options.max_train_examples is None and options.train_fraction is None):
        return examples
    n = len(examples)
    if options.train_fraction is not None:
        n = max(1, round(n * options.train_fraction))
    if options.max_train_examples is not None:
        n = min(n, options.max_train_examples)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:n])]


# ---------------------------------------------------------------------------------------------------
# Batching and collation.


def feature_length(feature: dict) -> int:
    ids = feature["input_ids"]
    return max(map(len, ids)) if ids and isinstance(ids[0], list) else len(ids)


def length_grouped_batches(lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0) -> list[list[int]]:
    """Batches of similar length: padding waste stays small without losing randomness.

    Shuffled mode sorts within windows of 50 batches, then shuffles the batch order (the HF
    LengthGroupedSampler idea). Unshuffled mode (evaluation) sorts everything by length."""
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    window = batch_size * 50
    grouped = []
    for start in range(0, len(order), window):
        grouped.extend(sorted(order[start:start + window], key=lambda i: -lengths[i]))
    batches = [grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size)]
    rng.shuffle(batches)
    return batches


# Keys that become tensors, with their padding value ("pad" = the tokenizer's pad id).
_PAD = {"input_ids": "pad", "labels": -100, "token_type_ids": 0}
_SCALAR_KEYS = {"labels", "start_positions", "end_positions"}


def collate(features: list[dict], pad_id: int, multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch (rounded up to `multiple_of` for tensor cores)."""
    longest = max(feature_length(f) for f in features)
    width = -(-longest // multiple_of) * multiple_of
    batch = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if key in _SCALAR_KEYS and not isinstance(values[0], list):
            # Regression targets (STS-B) are floats; class ids and positions are integers.
            batch[key] = torch.tensor(values, dtype=torch.float32 if isinstance(values[0], float) else torch.long)
        elif key in _PAD:
            pad = pad_id if _PAD[key] == "pad" else _PAD[key]
            batch[key] = _pad(values, width, pad)
    batch["attention_mask"] = _pad([_ones(f["input_ids"]) for f in features], width, 0)
    return batch


def _ones(ids: list) -> list:
    return [_ones(x) for x in ids] if ids and isinstance(ids[0], list) else [1] * len(ids)


def _pad(values: list, width: int, pad: int) -> torch.Tensor:
    if values and values[0] and isinstance(values[0][0], list):  # [batch][choices][tokens]
        return torch.stack([_pad(v, width, pad) for v in values])
    out = torch.full((len(values), width), pad, dtype=torch.long)
    for row, seq in enumerate(values):
        out[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


# ---------------------------------------------------------------------------------------------------
# Token budgets, bucketed lengths and unpadded (packed) collation (speed.py uses these).


def loss_terms(feature: dict) -> int:
    """How many terms a feature adds to its task's mean loss: its labelled tokens for token-level labels
    (tagging, MLM; -100 = none), else 1 (one label, one answer span, one question)."""
    labels = feature.get("labels")
    if isinstance(labels, list):
        flat = [x for row in labels for x in row] if labels and isinstance(labels[0], list) else labels
        return sum(1 for x in flat if x != -100)
    return 1


def sequence_lengths(feature: dict) -> list[int]:
    """Real token count of every row of a feature (one row, or one per choice)."""
    ids = feature["input_ids"]
    return [len(x) for x in ids] if ids and isinstance(ids[0], list) else [len(ids)]


def batch_cost(features: list[dict], packed: bool) -> int:
    """Tokens a micro batch computes: all real tokens when packed, rows x the longest row when padded."""
    rows = [n for f in features for n in sequence_lengths(f)]
    return sum(rows) if packed else len(rows) * max(rows)


def split_by_tokens(features: list[dict], max_tokens: int, packed: bool) -> list[list[dict]]:
    """Split one batch into micro batches costing at most `max_tokens` each (in order of length, so the
    padded cost stays low); a single feature over the budget still gets a micro batch of its own."""
    order = sorted(features, key=lambda f: -max(sequence_lengths(f)))
    out: list[list[dict]] = []
    for f in order:
        if out and batch_cost(out[-1] + [f], packed) <= max_tokens:
            out[-1].append(f)
        else:
            out.append([f])
    return out


def token_budget_batches(lengths: list[int], max_tokens: int, shuffle: bool, seed: int = 0,
                         packed: bool = False) -> list[list[int]]:
    """Length-grouped batches by token budget instead of a fixed count (fairseq's max_tokens): short
    sequences make big batches, long ones small. Same windowing as `length_grouped_batches`."""
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
        window = 4096
        grouped = []
        for start in range(0, len(order), window):
            grouped.extend(sorted(order[start:start + window], key=lambda i: -lengths[i]))
        order = grouped
    else:
        order.sort(key=lambda i: lengths[i])
    batches: list[list[int]] = []
    longest = total = 0
    for i in order:
        n = lengths[i]
        if batches:
            cost = total + n if packed else (len(batches[-1]) + 1) * max(longest, n)
            if cost <= max_tokens:
                batches[-1].append(i)
                longest, total = max(longest, n), total + n
                continue
        batches.append([i])
        longest = total = n
    if shuffle:
        rng.shuffle(batches)
    return batches


def bucket_length(n: int, buckets: Optional[list[int]] = None, steps: int = 16) -> int:
    """The padded length for `n` tokens: the smallest of `buckets` that fits, or else `n` rounded up to
    1/steps of its power of two (steps=16: at most 6.25% padding; steps=8: 12.5%, half as many shapes)."""
    for b in sorted(buckets or ()):
        if b >= n:
            return b
    step = max(64, (1 << max(0, (n - 1).bit_length() - 1)) // max(1, steps))
    return -(-n // step) * step


def collate_packed(features: list[dict], pad_id: int, position_offset: int, max_seqlen: int,
                   max_rows: Optional[int] = None, length: Optional[int] = None) -> dict[str, torch.Tensor]:
    """`collate` plus an unpadded view of the same batch: every real token in one row.

    packed_ids / packed_pos [1, T]: the tokens of all rows back to back; positions restart at
    `position_offset` for each row (XLM-R/RoBERTa count from padding_idx + 1 = 2, BERT from 0).
    cu_seqlens [K] int32: row boundaries (flash-attention varlen layout). The tail up to `length` is filler
    (pad tokens at the pad position, split into pieces of at most `max_seqlen`), and cu_seqlens is padded
    with empty rows to K = max_rows + ceil(T / max_seqlen) + 1, so that T and K, and with them every shape,
    depend only on the bucket (CUDA graphs and torch.compile then reuse one graph per bucket).
    unpack_index [rows, L]: where each padded slot's token sits in the packed row (0 for padding)."""
    batch = collate(features, pad_id)
    rows = [r for f in features for r in (f["input_ids"] if f["input_ids"] and isinstance(f["input_ids"][0], list)
                                          else [f["input_ids"]])]
    lengths = [len(r) for r in rows]
    if max(lengths) > max_seqlen:
        raise ValueError(f"a sequence of {max(lengths)} tokens exceeds the packed max_seqlen {max_seqlen}")
    real = sum(lengths)
    total = length if length is not None else -(-real // 8) * 8
    if total < real:
        raise ValueError(f"packed length {total} is shorter than the batch's {real} real tokens")
    filler = total - real
    pieces = [min(max_seqlen, filler - s) for s in range(0, filler, max_seqlen)]
    cu = [0]
    for n in lengths + pieces:
        cu.append(cu[-1] + n)
    width = (max_rows if max_rows is not None else len(rows)) + -(-total // max_seqlen) + 1
    if len(cu) > width:
        raise ValueError(f"{len(rows)} rows do not fit max_rows={max_rows}")
    cu += [total] * (width - len(cu))
    ids = [t for r in rows for t in r] + [pad_id] * filler
    pos = [p for n in lengths for p in range(position_offset, position_offset + n)]
    pos += [max(position_offset - 1, 0)] * filler
    starts = torch.tensor(cu[:len(rows)], dtype=torch.long)
    slots = torch.arange(batch["attention_mask"].size(-1))
    inside = slots[None, :] < torch.tensor(lengths)[:, None]
    batch["packed_ids"] = torch.tensor([ids], dtype=torch.long)
    batch["packed_pos"] = torch.tensor([pos], dtype=torch.long)
    batch["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32)
    batch["unpack_index"] = torch.where(inside, starts[:, None] + slots[None, :], torch.zeros((), dtype=torch.long))
    return batch
