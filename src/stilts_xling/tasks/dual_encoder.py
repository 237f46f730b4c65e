"""Dual-encoder retrieval (XTREME-R's LAReQA and Mewsli-X): fine-tuned on English (question, candidate)
pairs with in-batch negatives, scored by mAP@20 of each question against a candidate pool.

Model, as xtreme `third_party/bert.py` BertForRetrieval (XLMRobertaForRetrieval is the same class): one
shared encoder embeds questions and candidates; a vector is the pooler output, dense + tanh on the first
token (`model.pooling`, "first" for XLM-R), L2-normalized; logits = scale * cos(question_i, candidate_j)
over the batch, with a learned scale initialised at 100; loss = cross-entropy of each question against
the batch's candidates, its own pair being the target (one direction). The negatives are the other pairs
of the same forward pass: the micro batch (the script's per-GPU batch; accumulation does not add any),
so `micro_batch_size` is part of the recipe, and data parallelism or `speed.token_budget` splitting a micro
batch give fewer negatives.

Inputs (xtreme processors/lareqa.py, processors/mewslix.py): a question alone; a LAReQA candidate as the
pair (answer sentence, its paragraph), truncated longest-first; a Mewsli-X candidate as its entity
description. LAReQA's `max_length` 352 is xtreme's MAX_SEQ_LEN, "query + answer": questions get
--max_query_length 96 (QUERY_LENGTH) and candidates the other 256 (--max_answer_length); with a smaller
`max_length` the question gets at most half. Mewsli-X uses 64 for both.
xtreme's evaluate_retrieval.py embeds a LAReQA candidate at test time as `sentence + context` glued into
one string without a separator, unlike its training pairs; here it stays the (sentence, context) pair it
was trained on, as LAReQA's own utils_lareqa.set_encodings encodes it.
Not reproduced: for xlm-roberta-large both scripts pass --do_lower_case, which the transformers 2.x they
pin (install_tools.sh, commit cefd51c) applies in PreTrainedTokenizer.tokenize, so xtreme's XLM-R saw
lower-cased text here (not in its other tasks, nor for mBERT); texts stay cased, as everywhere else here.

Scoring (`average_precision_at_k` in stilts_xling.retrieval): AP@20 of the top 20 cosine neighbours,
divided by min(#relevant, 20), averaged per question language, x 100.
  LAReQA (utils_lareqa.mean_avg_prec_at_k): questions of every language against ONE pool of every
    XQuAD-R sentence of every configured language (default: all 11); relevant = each sentence, in any
    language, that answers the question's xling_id. Restricting `xtreme.languages.lareqa` shrinks the
    pool, so only full-language runs compare with published numbers; rows carry the pool size.
  Mewsli-X (utils_mewslix.evaluate, run_eval_mewslix.sh): each WikiNews mention against the ~1M entities
    of candidate_set_entities.jsonl; one relevant entity, so AP@20 = MRR@20. dev = wikinews_mentions-dev,
    test = wikinews_mentions-test (labels in xtreme's mock layout {example_id: [entity_id]}).
Because the pool spans languages, `evaluate_languages` replaces the pipeline's per-language loop: the pool
is embedded once per split (once for both splits when they share it) in length-sorted batches under bf16
autocast on CUDA, and the top 20 come from the chunked `knn`, so memory stays at one similarity block.

Model selection (a choice; xtreme has no retrieval metric during training): its scripts only log the
in-batch loss on an English dev set, evaluate Mewsli-X's last state and pick a LAReQA checkpoint by
hand ("checkpoint-9000", "based on validation performance"). Here the same English dev sets (SQuAD v1.1
dev-v1.1.json, wikipedia_pairs-dev.jsonl) are scored once per epoch with mAP@20 of their questions
against the pool of their own candidates (a dev pool; the full pools are for evaluation), and the best
epoch is kept; patience is irrelevant at 2-3 evaluations.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch
from torch import nn

from .. import retrieval as R
from ..config import TrainConfig
from ..languages import XTREME_R_LANGUAGES
from ..metrics import MAP_K, MAP_METRIC
from ..readers import DataError
from .base import FileSource, TaskSpec
from .span_qa import SQUAD_V1_FILES

K, METRIC = MAP_K, MAP_METRIC  # mAP@20: xtreme commit e23cf42 for LAReQA, utils_mewslix.TOP_K
# xtreme --max_query_length per task; the candidate gets the rest of max_length (see the docstring).
QUERY_LENGTH = {"lareqa": 96, "squad_retrieval": 96}
EMBED_BATCH = 128  # texts per forward pass when embedding a pool (xtreme evaluate_retrieval: 100)
TOKENIZE_CHUNK = 65536  # texts tokenized at a time: a million token lists at once would take GBs


def lengths(spec: TaskSpec, max_length: int) -> tuple[int, int]:
    """(question, candidate) token limits for `max_length`."""
    cap = QUERY_LENGTH.get(spec.name)
    if cap is None:
        return max_length, max_length
    question = min(cap, max_length // 2)
    return question, max_length - question


def encode_questions(tokenizer: Any, records: list[dict], max_length: int) -> list[list[int]]:
    return tokenizer([r["query"] for r in records], truncation=True, max_length=max_length)["input_ids"]


def encode_candidates(tokenizer: Any, records: list[dict], max_length: int) -> list[list[int]]:
    """A candidate with a context is the pair (candidate, context), cut longest-first as xtreme's
    encode_plus; one without is a single text."""
    out: list[Optional[list[int]]] = [None] * len(records)
    paired = [i for i, r in enumerate(records) if r["candidate_context"] is not None]
    single = [i for i, r in enumerate(records) if r["candidate_context"] is None]
    if paired:
        ids = tokenizer([records[i]["candidate"] for i in paired], [records[i]["candidate_context"] for i in paired],
                        truncation="longest_first", max_length=max_length)["input_ids"]
        for i, row in zip(paired, ids):
            out[i] = row
    if single:
        ids = tokenizer([records[i]["candidate"] for i in single], truncation=True, max_length=max_length)["input_ids"]
        for i, row in zip(single, ids):
            out[i] = row
    return out


class Pool:
    """The distinct candidates of some records (first record of each candidate_id wins) and, per target,
    the candidates relevant to it."""

    def __init__(self, records: list[dict]):
        self.index: dict[str, int] = {}
        self.records: list[dict] = []
        self.positions: list[int] = []  # where each pool row's record is in `records`
        self.by_target: dict[str, dict[int, None]] = {}
        for i, r in enumerate(records):
            if r["candidate"] is None:
                continue
            j = self.index.setdefault(r["candidate_id"], len(self.records))
            if j == len(self.records):
                self.records.append(r)
                self.positions.append(i)
            if r["target"] is not None:
                self.by_target.setdefault(r["target"], {})[j] = None
        self.ids = list(self.index)  # candidate_id of each pool row

    def relevant(self, target: Optional[str]) -> list[int]:
        return list(self.by_target.get(target, ()))

    def ranked(self, questions: list[dict], top: torch.Tensor) -> dict[str, list[str]]:
        """question id -> candidate ids, from `top`'s pool rows (one row of it per question)."""
        return {q["id"]: [self.ids[j] for j in row] for q, row in zip(questions, top.tolist())}


def questions_of(records: list[dict]) -> list[dict]:
    out = [r for r in records if r["query"] is not None]
    ids = [r["id"] for r in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"question id {dup!r} occurs more than once; ids must be unique within a split")
    return out


class DualEncoderHead(nn.Module):
    """BertForRetrieval's pooler (dense + tanh, as BERT/RoBERTa pool) and its learned logit scale."""

    def __init__(self, hidden_size: int, scale: float = 100.0):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        nn.init.normal_(self.dense.weight, std=0.02)  # transformers' init of a fresh pooler
        nn.init.zeros_(self.dense.bias)
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(torch.tanh(self.dense(pooled)).float(), dim=-1)


class DualEncoderFamily:
    name = "dual_encoder"

    def featurize(self, spec: TaskSpec, examples: list[dict], tokenizer: Any, max_length: int) -> list[dict]:
        """[question ids, candidate ids] per pair; no labels: each question's positive is its own pair."""
        for ex in examples:
            if ex["query"] is None or ex["candidate"] is None:
                raise DataError(f"{spec.name}: record {ex['id']!r} is not a (question, candidate) pair; training "
                                "and model selection read pair files (SQuAD json, wikipedia_pairs-*.jsonl)")
        q_len, c_len = lengths(spec, max_length)
        questions = encode_questions(tokenizer, examples, q_len)
        candidates = encode_candidates(tokenizer, examples, c_len)
        return [{"input_ids": [q, c], "example_index": i} for i, (q, c) in enumerate(zip(questions, candidates))]

    def make_head(self, spec: TaskSpec, hidden_size: int) -> nn.Module:
        return DualEncoderHead(hidden_size)

    def forward(self, head, hidden, pooled, batch):
        vectors = head(pooled)
        ids = batch["input_ids"]
        if ids.dim() == 2:  # single texts (embedding a pool): the unit vectors themselves
            return None, vectors
        pairs = vectors.view(ids.size(0), ids.size(1), -1)  # [B, 2, H]: question, candidate
        logits = head.scale * pairs[:, 0] @ pairs[:, 1].T
        loss = nn.functional.cross_entropy(logits, torch.arange(ids.size(0), device=logits.device))
        # Per feature its question vector then its candidate vector: predict() scores the dev pool with them.
        return loss, pairs.reshape(ids.size(0), -1)

    def predict(self, spec, examples, features, logits):
        """Top-20 candidate ids per question, the pool being the candidates of these pairs (model selection)."""
        rows = torch.stack([torch.as_tensor(r) for r in logits])
        half = rows.size(1) // 2
        records = [examples[f["example_index"]] for f in features]
        pool = Pool(records)
        candidates = rows[pool.positions, half:]
        top, _ = R.average_precisions(rows[:, :half], candidates, [pool.relevant(r["target"]) for r in records], K)
        return pool.ranked(records, top)

    def score(self, spec, predictions, examples, lang):
        """mAP@20 (percentage) of `predictions` (question id -> ranked candidate ids); relevance from
        `examples`, which must hold the pool's candidate records too."""
        relevant: dict[str, set[str]] = {}
        for r in examples:
            if r["candidate"] is not None and r["target"] is not None:
                relevant.setdefault(r["target"], set()).add(r["candidate_id"])
        return {METRIC: R.mean_average_precision(
            ((predictions.get(q["id"], []), relevant.get(q["target"], ())) for q in questions_of(examples)), K)}

    def evaluate_languages(self, ctx: Any, spec: TaskSpec, model: Any, tokenizer: Any, hp: TrainConfig,
                           todo: list[tuple[str, str]]) -> Iterator[tuple[str, str, list[dict], dict, dict]]:
        """(language, split, questions, metrics, predictions) for each (language, split) in `todo`, all
        scored against the split's one pool (pipeline.fine_tune_target writes the rows)."""
        cfg, device = ctx.cfg, ctx.accelerator.device
        q_len, c_len = lengths(spec, hp.max_length)

        def embed(records: list[dict], encode: Callable[[list[dict]], list[list[int]]]) -> torch.Tensor:
            return embed_texts(model, spec.name, encode, records, device, tokenizer.pad_token_id, cfg.bf16)

        pool_cache: dict[tuple, torch.Tensor] = {}
        for split in dict.fromkeys(split for _, split in todo):
            records = split_records(ctx, spec, split)
            pool = Pool(records)
            key = tuple(pool.ids)
            if key not in pool_cache:  # dev and test of Mewsli-X share the million-entity pool
                pool_cache = {key: embed(pool.records, lambda part: encode_candidates(tokenizer, part, c_len))}
            questions = questions_of(records)
            for lang in [lang for lang, s in todo if s == split]:
                mine = [q for q in questions if q["language"] == lang]
                if not mine:
                    raise DataError(f"{spec.name} {split}: no questions in language {lang!r}")
                vectors = embed(mine, lambda part: encode_questions(tokenizer, part, q_len))
                top, ap = R.average_precisions(vectors, pool_cache[key], [pool.relevant(q["target"]) for q in mine], K)
                yield (lang, split, mine, {METRIC: 100 * ap.mean().item(), "candidates": len(pool.ids)},
                       pool.ranked(mine, top))


@torch.no_grad()
def embed_texts(model: Any, task: str, encode: Callable[[list[dict]], list[list[int]]], records: list[dict],
                device: torch.device, pad_id: int, bf16: bool = True) -> torch.Tensor:
    """[len(records), hidden] unit vectors (float32, on `device`), in input order: `encode` tokenizes
    TOKENIZE_CHUNK records at a time, each chunk runs in length-sorted batches of EMBED_BATCH."""
    # Imported here: evaluate and data import the registry, which imports this module.
    from ..data import collate, length_grouped_batches
    from ..evaluate import autocast

    was_training = model.training
    model.eval()
    out: Optional[torch.Tensor] = None
    for start in range(0, len(records), TOKENIZE_CHUNK):
        ids = encode(records[start:start + TOKENIZE_CHUNK])
        for idx in length_grouped_batches([len(x) for x in ids], EMBED_BATCH, shuffle=False):
            batch = {k: v.to(device) for k, v in collate([{"input_ids": ids[i]} for i in idx], pad_id).items()}
            with autocast(device, bf16):
                _, vectors = model(task, batch)
            if out is None:
                out = torch.empty(len(records), vectors.size(-1), device=device)
            out[torch.tensor([start + i for i in idx], device=device)] = vectors.float()
    model.train(was_training)
    if out is None:
        raise DataError(f"{task}: nothing to embed")
    return out


def split_records(ctx: Any, spec: TaskSpec, split: str) -> list[dict]:
    """Every record of one evaluation split: a per-language file (XQuAD-R) is read for every configured
    language, since the pool spans them all; a shared file (Mewsli-X) once."""
    from ..data import load_examples
    from ..pipeline import target_languages

    entry = spec.files.splits[split] if spec.files and split in spec.files.splits else ""
    per_language = "{lang" in "".join(entry if isinstance(entry, tuple) else (entry,))
    languages = target_languages(ctx.cfg, spec) if per_language else (None,)
    options = ctx.cfg.xtreme.task_options.get(spec.name)
    return [r for lang in languages for r in load_examples(spec, split, lang, ctx.cfg, options)]


FAMILY = DualEncoderFamily()

_MEWSLIX_HINT = ("run xtreme's scripts/download_mewslix_data.sh (it runs get-mewsli-x.sh from "
                 "google-research/dense_representations_for_entity_retrieval/mel, which restores the WikiNews "
                 "text) and move download/mewslix/*.jsonl into {dir}")
# The scripts' settings (scripts/train_lareqa.sh, scripts/train_mewslix.sh for xlm-roberta-large): no
# warmup, no weight decay, clip 1.0; the per-GPU batch is the micro batch (its in-batch negatives).
_LAREQA_TRAIN = TrainConfig(epochs=3, lr=2e-5, batch_size=16, micro_batch_size=4, max_length=352, weight_decay=0.0,
                            warmup=0.0, max_grad_norm=1.0, eval_every=0, eval_subset=0)

TASKS = [
    TaskSpec(
        name="squad_retrieval", family="dual_encoder", phases=("intermediate",), metric=METRIC,
        description="SQuAD v1.1 as question -> answer-sentence retrieval pairs (LAReQA's English training data)",
        files=dataclasses.replace(SQUAD_V1_FILES, reader="squad_sentences_json"),
        train=_LAREQA_TRAIN,
    ),
    TaskSpec(
        name="lareqa", family="dual_encoder", phases=("xtreme",), metric=METRIC, group="retrieval",
        description="LAReQA (XTREME-R): dual encoder trained on SQuAD v1.1, mAP@20 on XQuAD-R across 11 languages",
        languages=XTREME_R_LANGUAGES["lareqa"], train_task="squad_retrieval",
        # XQuAD-R re-cuts XQuAD, which XTREME (and this project) evaluates as its dev set.
        files=FileSource(folder="lareqa", reader="xquad_r_json", splits={"dev": "xquad-r/{lang}.json"},
                         hint="download https://github.com/google-research-datasets/lareqa/archive/master.zip and "
                              "unzip its contents into {dir} (files xquad-r/<lang>.json), as xtreme's "
                              "scripts/download_lareqa_data.sh"),
        train=_LAREQA_TRAIN,
    ),
    TaskSpec(
        name="mewslix", family="dual_encoder", phases=("xtreme",), metric=METRIC, group="retrieval",
        description="Mewsli-X (XTREME-R): entity linking by dual encoder, English Wikipedia pairs -> WikiNews "
                    "mentions in 11 languages against 1M entities, mAP@20",
        languages=XTREME_R_LANGUAGES["mewslix"], dev_split="wikipedia_dev",
        # An evaluation split is its mentions plus the shared candidate set, read together.
        files=FileSource(folder="mewslix", reader="mewslix_jsonl", splits={
            "train": "wikipedia_pairs-train.jsonl", "wikipedia_dev": "wikipedia_pairs-dev.jsonl",
            "dev": ("wikinews_mentions-dev.jsonl", "candidate_set_entities.jsonl"),
            "test": ("wikinews_mentions-test.jsonl", "candidate_set_entities.jsonl")},
            hint=_MEWSLIX_HINT),
        train=TrainConfig(epochs=2, lr=1e-5, batch_size=32, micro_batch_size=8, max_length=64, weight_decay=0.0,
                          warmup=0.0, max_grad_norm=1.0, eval_every=0, eval_subset=0),
    ),
]
