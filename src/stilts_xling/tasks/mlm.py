"""Masked language modelling on plain multilingual text: the paper's alternative (a) (facts.md 1.5).

MLM is one more intermediate task, mixed in by the multi-task sampler (`intermediate.tasks: [mnli, mlm]`;
configs/intermediate/mnli_mlm.yaml shows how to give it a fixed share of the steps).

- Data: `<data_dir>/mlm/{lang}.txt`, one sentence or paragraph per line, and a held-out `{lang}.dev.txt`.
  The training set concatenates the languages in `intermediate.task_options.mlm.languages` (default: all
  40 XTREME languages), loaded as translated.py loads several languages. Lines longer than max_length are
  cut into consecutive windows, so a Wikipedia paragraph is not thrown away after its first 256 tokens.
- Masking (BERT): 15% of the non-special tokens of each window are selected; of those 80% become <mask>,
  10% a random ordinary token, 10% stay; the loss covers the selected tokens only. It is done once, at
  featurization, with a fixed-seed generator: every run and the feature cache see the same masks (static
  masking, like BERT's data and jiant's mlm_premasked).
- Head: the checkpoint's own pretrained MLM head when it has one (xlm-roberta-large's lm_head, mBERT's
  cls), else a fresh BERT-style head; either way its output projection is the encoder's input embedding
  matrix (tied). Like every head it is dropped after intermediate training; only the encoder is saved.
- Dev: masked-token accuracy and perplexity = exp(mean NLL of the masked tokens), on English during
  training (MLM is auxiliary: it never chooses the checkpoint); after training every chosen language's
  `{lang}.dev.txt` is scored too, one result row per language.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..languages import XTREME_LANGUAGES
from .base import FileSource, TaskSpec

log = logging.getLogger(__name__)

MASK_RATE = 0.15  # share of maskable tokens selected for prediction
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the selected: -> <mask>, -> a random token; the rest are kept
MASK_SEED = 1234  # static masks: the same for every run over the same text
_CHUNK = 1024  # windows masked per tensor operation


def mask_tokens(ids: torch.Tensor, maskable: torch.Tensor, mask_id: int, ordinary_ids: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of a [rows, length] batch: (inputs, labels), labels -100 where nothing is predicted.

    `maskable` is False at special tokens and padding; random replacements are drawn from `ordinary_ids`
    (never a special token). A row with maskable tokens but no selection gets one selected token, so every
    row carries loss (a batch of only unselected short lines would have a NaN loss)."""
    draw = torch.rand(ids.shape, generator=generator)
    selected = (draw < MASK_RATE) & maskable
    empty = ~selected.any(dim=1) & maskable.any(dim=1)
    if empty.any():
        pick = torch.where(maskable, torch.rand(ids.shape, generator=generator), -1.0).argmax(dim=1)
        selected[empty.nonzero().squeeze(1), pick[empty]] = True
    action = torch.rand(ids.shape, generator=generator)
    to_mask = selected & (action < MASK_SHARE)
    to_random = selected & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)
    random_ids = ordinary_ids[torch.randint(len(ordinary_ids), ids.shape, generator=generator)]
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), torch.where(to_random, random_ids, ids))
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    return inputs, labels


def _pretrained_head(encoder: nn.Module) -> Optional[nn.Module]:
    """The MLM head of the checkpoint the encoder was loaded from, or None when it has none (a saved
    intermediate encoder, GPT-2, a checkpoint trained without an MLM head, e.g. by replaced-token
    detection) or when the encoder no longer holds that checkpoint's weights (model.random_init)."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    source = getattr(encoder, "name_or_path", "")
    if not source:
        return None
    config = AutoConfig.from_pretrained(source)
    if not any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in config.architectures or ()):
        return None
    mlm, info = AutoModelForMaskedLM.from_pretrained(source, output_loading_info=True)
    prefix = mlm.base_model_prefix
    heads = [module for name, module in mlm.named_children() if name != prefix]
    missing = [k for k in info["missing_keys"] if not k.startswith(prefix + ".")]
    embeddings = encoder.get_input_embeddings().weight
    if (len(heads) != 1 or missing or mlm.get_output_embeddings() is None
            or not torch.equal(mlm.get_input_embeddings().weight, embeddings.detach().cpu())):
        log.info("mlm: %s has no usable MLM head for this encoder; starting a fresh one", source)
        return None
    mlm.get_output_embeddings().weight = embeddings  # tie to this encoder, not to the discarded copy
    log.info("mlm: reusing the pretrained MLM head of %s", source)
    return heads[0]


def _fresh_head(encoder: nn.Module) -> nn.Module:
    """BERT's MLM head shape (dense, GELU, LayerNorm, projection onto the vocabulary), tied."""
    embeddings = encoder.get_input_embeddings()
    dim = embeddings.embedding_dim
    decoder = nn.Linear(dim, embeddings.num_embeddings)
    decoder.weight = embeddings.weight
    return nn.Sequential(nn.Linear(encoder.config.hidden_size, dim), nn.GELU(), nn.LayerNorm(dim), decoder)


class MLMFamily:
    """Defines `make_model_head(spec, encoder)` instead of `make_head`: the head shares the encoder's
    embeddings. Scores need the gold tokens at evaluation (`scores_with_labels`)."""

    auxiliary = True  # trains along; model selection ignores its dev score (train.py)

    name = "mlm"
    scores_with_labels = True

    def featurize(self, spec: TaskSpec, examples: list[dict], tokenizer: Any, max_length: int) -> list[dict]:
        if not examples:
            return []
        if tokenizer.mask_token_id is None:
            raise ValueError(f"{spec.name}: the tokenizer {tokenizer.name_or_path!r} has no mask token; masked LM "
                             "needs one (set model.tokenizer to one that has, e.g. the model's MLM tokenizer)")
        enc = tokenizer([ex["text"] for ex in examples], truncation=True, max_length=max_length,
                        return_overflowing_tokens=True)
        rows, owners = enc["input_ids"], enc["overflow_to_sample_mapping"]
        special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        vocab = torch.arange(len(tokenizer))
        ordinary = vocab[~torch.isin(vocab, special)]
        generator = torch.Generator().manual_seed(MASK_SEED)
        features = []
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start:start + _CHUNK]
            lengths = torch.tensor([len(r) for r in chunk])
            ids = torch.full((len(chunk), int(lengths.max())), tokenizer.pad_token_id)
            for i, row in enumerate(chunk):
                ids[i, :len(row)] = torch.tensor(row)
            real = torch.arange(ids.size(1))[None, :] < lengths[:, None]
            inputs, labels = mask_tokens(ids, real & ~torch.isin(ids, special), tokenizer.mask_token_id,
                                         ordinary, generator)
            for i, n in enumerate(lengths.tolist()):
                if (labels[i, :n] != -100).any():  # a window of special tokens only has nothing to predict
                    features.append({"input_ids": inputs[i, :n].tolist(), "labels": labels[i, :n].tolist(),
                                     "example_index": owners[start + i]})
        return features

    def make_model_head(self, spec: TaskSpec, encoder: nn.Module) -> nn.Module:
        return _pretrained_head(encoder) or _fresh_head(encoder)

    def forward(self, head, hidden, pooled, batch):
        """Vocabulary logits for the masked positions only (15% of the tokens: the [tokens, vocab]
        projection is the costly part). The returned per-token tensor is [batch, length, 2]:
        (log p(gold token), 1 if the top prediction is the gold token), zero where nothing is masked."""
        labels = batch.get("labels")
        if labels is None:
            return None, head(hidden)
        picked = labels != -100
        out = torch.zeros(*labels.shape, 2, device=hidden.device)
        if not picked.any():
            return None, out
        gold = labels[picked]
        log_probs = head(hidden[picked]).float().log_softmax(dim=-1)
        loss = F.nll_loss(log_probs, gold)
        with torch.no_grad():
            out[picked] = torch.stack([log_probs.gather(1, gold[:, None]).squeeze(1),
                                       (log_probs.argmax(dim=-1) == gold).float()], dim=-1)
        return loss, out

    def predict(self, spec, examples, features, logits):
        """Per example (all its windows): summed log-probability, correct count and number masked."""
        out: dict[str, dict[str, float]] = {}
        for f, row in zip(features, logits):
            picked = torch.tensor(f["labels"]) != -100
            totals = out.setdefault(examples[f["example_index"]]["id"],
                                    {"log_prob": 0.0, "correct": 0.0, "masked": 0})
            totals["log_prob"] += float(row[picked, 0].sum())
            totals["correct"] += float(row[picked, 1].sum())
            totals["masked"] += int(picked.sum())
        return out

    def score(self, spec, predictions, examples, lang):
        masked = sum(p["masked"] for p in predictions.values())
        if not masked:
            return {"accuracy": 0.0, "perplexity": math.inf}
        log_prob = sum(p["log_prob"] for p in predictions.values())
        return {"accuracy": 100.0 * sum(p["correct"] for p in predictions.values()) / masked,
                "perplexity": math.exp(-log_prob / masked)}


FAMILY = MLMFamily()

# Every language of some XTREME task (40).
MLM_LANGUAGES = tuple(sorted({lang for langs in XTREME_LANGUAGES.values() for lang in langs}))
_HINT = ("put plain text into {dir}: <lang>.txt with one sentence or paragraph per line (e.g. Wikipedia "
         "through WikiExtractor) and a held-out <lang>.dev.txt (e.g. `tail -n 1000 de.txt > de.dev.txt; "
         "head -n -1000 de.txt > de.train && mv de.train de.txt`)")

TASKS = [
    TaskSpec(
        name="mlm", family="mlm", phases=("intermediate",), metric="accuracy",
        description="Masked LM (BERT 15% masking) on plain text in the XTREME languages; languages from "
                    "task_options; masked-token accuracy and perplexity on held-out text",
        languages=MLM_LANGUAGES,
        files=FileSource(folder="mlm", reader="text_lines", hint=_HINT,
                         splits={"train": "{lang}.txt", "dev": "{lang}.dev.txt"}),
        # No published setting (facts.md 1.5): the intermediate defaults; one pass over the chosen text.
        train=TrainConfig(epochs=1, lr=1e-5, batch_size=32, max_length=256),
    ),
]
