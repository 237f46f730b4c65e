"""Token tagging (POS, NER, CCG supertags): one tag per word, read off one sub-token of the word.

Features: words are tokenized with `is_split_into_words=True`; the first sub-token of each word carries
its tag id and every other position -100 (jiant `label_mask`, XTREME `run_tag`), so the loss and the
prediction see each word exactly once. CCG, as jiant aligns it, uses the first sub-token that holds text
(`TaskSpec.tag_piece`).

Long sentences are split, never truncated, as XTREME's preprocessing does (`utils_preprocess.py`
`_preprocess_one_file`): consecutive words fill a window until the next word would pass max_length, and
the rest starts a new window (a new feature of the same example). A word with no sub-tokens, or with more
than fit in one window, becomes the tokenizer's unknown token, as there. Every word therefore has a
prediction and the predicted sequence is as long as the gold one, which seqeval requires. The windows'
predictions are joined back into one sentence before scoring; XTREME scores each window as its own
sentence, which differs only for an entity cut by a window boundary.

Tag sets: UPOS and PAN-X are fixed. CCG supertags come from the training data (`labels` left empty);
see `fit_labels` for the unknown-tag policy.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from .. import metrics
from ..config import TrainConfig
from ..languages import XTREME_LANGUAGES
from ..readers import UPOS_TAGS
from .base import FileSource, HubSource, TaskSpec, cross_entropy

log = logging.getLogger(__name__)

# Both in the hub's ClassLabel order (google/xtreme udpos.* is alphabetical), so hub ids need no remapping.
UPOS = tuple(sorted(UPOS_TAGS))
PANX_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")

_SCORERS = {
    # XTREME evaluate.py scores POS and NER alike with seqeval (see metrics.tagging_scores on UPOS).
    "seqeval": metrics.tagging_scores,
    # jiant's CCG metric: accuracy over the words' first sub-tokens.
    "token_accuracy": lambda preds, golds: metrics.accuracy([t for s in preds for t in s],
                                                            [t for s in golds for t in s]),
}


def _first_with_text(tokenizer: Any):
    """pieces -> index of the first piece that decodes to some text, else 0 (jiant's CCG alignment)."""
    blank: dict[int, bool] = {}

    def is_blank(token_id: int) -> bool:
        if token_id not in blank:
            token = tokenizer.convert_ids_to_tokens(token_id)
            blank[token_id] = not tokenizer.convert_tokens_to_string([token]).strip()
        return blank[token_id]

    return lambda pieces: next((k for k, p in enumerate(pieces) if not is_blank(p)), 0)


# TaskSpec.tag_piece -> (tokenizer -> (a word's sub-token ids -> the index of the one carrying its tag))
_TAG_PIECE = {"first": lambda tokenizer: lambda pieces: 0, "first_with_text": _first_with_text}


class TaggingFamily:
    name = "tagging"

    def fit_labels(self, spec: TaskSpec, train_examples: list[dict]) -> TaskSpec:
        """The spec with its tag set taken from `train_examples` (for specs whose `labels` are empty).

        Unknown-tag policy, mirroring jiant's effect: jiant's CCG maps tags through a fixed tags_to_id file
        (1363 supertags, "all of CCGbank" per jiant v1), so a tag seen only in dev is an output the head
        never trained and is scored wrong (a tag missing from that file is a KeyError there). Here the
        head has one output per training tag; a dev/test tag unseen in training keeps its gold string,
        gets no loss (-100) and counts as an error in accuracy, without crashing.
        """
        tags = sorted({t for ex in train_examples if ex["tags"] is not None for t in ex["tags"]})
        if not tags:
            raise ValueError(f"{spec.name}: the training data has no tags to build the tag set from")
        log.info("%s: %d tags from %d training sentences", spec.name, len(tags), len(train_examples))
        return dataclasses.replace(spec, labels=tuple(tags))

    def labels(self, spec: TaskSpec) -> tuple[str, ...]:
        if not spec.labels:
            raise ValueError(f"{spec.name}: its tag set comes from the training data; call fit_labels first")
        return spec.labels

    def featurize(self, spec: TaskSpec, examples: list[dict], tokenizer: Any, max_length: int) -> list[dict]:
        tag_ids = {tag: i for i, tag in enumerate(self.labels(spec))}
        prefix, suffix = _special_tokens(tokenizer)
        room = max_length - len(prefix) - len(suffix)
        if room < 1:
            raise ValueError(f"max_length {max_length} leaves no room for words after the special tokens")
        encoded = tokenizer([ex["tokens"] for ex in examples], is_split_into_words=True, add_special_tokens=False)
        tagged = _TAG_PIECE[spec.tag_piece](tokenizer)
        features = []
        for i, ex in enumerate(examples):
            pieces: list[list[int]] = [[] for _ in ex["tokens"]]
            for token_id, word in zip(encoded["input_ids"][i], encoded.word_ids(i)):
                pieces[word].append(token_id)
            pieces = [p if 0 < len(p) <= room else [tokenizer.unk_token_id] for p in pieces]
            tags = ex["tags"]
            for start, end in _windows([len(p) for p in pieces], room):
                ids, labels, firsts = list(prefix), [-100] * len(prefix), []
                for w in range(start, end):
                    k = tagged(pieces[w])
                    firsts.append(len(ids) + k)
                    labels += [-100] * k + [tag_ids.get(tags[w], -100) if tags else -100]
                    labels += [-100] * (len(pieces[w]) - k - 1)
                    ids += pieces[w]
                features.append({"input_ids": ids + suffix, "labels": labels + [-100] * len(suffix),
                                 "first_tokens": firsts, "word_offset": start, "num_words": end - start,
                                 "example_index": i})
        return features

    def make_head(self, spec: TaskSpec, hidden_size: int) -> nn.Module:
        # XTREME's and jiant's token classifier: dropout, then one linear layer on every token.
        return nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden_size, len(self.labels(spec))))

    def forward(self, head, hidden, pooled, batch):
        logits = head(hidden)  # [B, T, K]
        labels = batch.get("labels")
        if labels is None:  # prediction
            return None, logits
        return cross_entropy(logits, labels), logits

    def predict(self, spec, examples, features, logits):
        """One tag per word: the argmax at each word's first sub-token, windows joined in order."""
        names = self.labels(spec)
        out: dict[str, list] = {}
        for f, row in zip(features, logits):
            ex = examples[f["example_index"]]
            tags = out.setdefault(ex["id"], [None] * len(ex["tokens"]))
            best = torch.as_tensor(row)[f["first_tokens"]].argmax(-1).tolist()
            tags[f["word_offset"]:f["word_offset"] + f["num_words"]] = [names[k] for k in best]
        return out

    def score(self, spec, predictions, examples, lang):
        gold = [ex for ex in examples if ex["tags"] is not None]
        return _SCORERS[spec.scorer]([predictions[ex["id"]] for ex in gold], [ex["tags"] for ex in gold])

    def hub_example(self, spec: TaskSpec, row: dict, index: int) -> dict:
        """A hub row (`tokens` + integer tag column, e.g. google/xtreme) in the tagging schema."""
        names = spec.hub.label_names or self.labels(spec)
        tags = row.get(spec.hub.fields["tags"])
        return {"id": str(row.get("id", index)), "tokens": list(row[spec.hub.fields["tokens"]]),
                "tags": None if tags is None else [names[t] if isinstance(t, int) else t for t in tags]}


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence (<s> and </s> for XLM-R)."""
    one = tokenizer([["x"]], is_split_into_words=True)
    words = one.word_ids(0)
    body = [k for k, w in enumerate(words) if w is not None]
    ids = one["input_ids"][0]
    return ids[:body[0]], ids[body[-1] + 1:]


def _windows(sizes: list[int], room: int) -> list[tuple[int, int]]:
    """[start, end) word ranges whose sub-token counts sum to at most `room` (each size <= room)."""
    out, start, used = [], 0, 0
    for w, n in enumerate(sizes):
        if used + n > room:
            out.append((start, w))
            start, used = w, 0
        used += n
    out.append((start, len(sizes)))
    return out


FAMILY = TaggingFamily()

_UD_HINT = ("download UD v2.5 (https://lindat.mff.cuni.cz/repository/xmlui/bitstream/handle/11234/1-3105/"
            "ud-treebanks-v2.5.tgz) and untar it so that {dir} holds the UD_<Language>-<Treebank>/ folders")
_PANX_HINT = ("download AmazonPhotos.zip from https://www.amazon.com/clouddrive/share/"
              "d3KGCRCIYwhKJF0H3eWA26hjg2ZCRhjpEQtDL70FSBN (XTREME's link), unzip it and untar each "
              "<lang>.tar.gz into {dir}/<lang>/ (files train, dev, test); or use data_source: hub")

TASKS = [
    TaskSpec(
        name="ccg", family="tagging", phases=("intermediate",), metric="accuracy", scorer="token_accuracy",
        description="CCGbank supertagging; tag set = the training file's supertags",
        labels=(), labels_from_train=True,  # the pipeline calls TaggingFamily.fit_labels on the train split
        tag_piece="first_with_text",  # jiant ccg.py maps each word to the sub-token holding its first character
        files=FileSource(folder="ccg", reader="ccg_tsv", splits={"train": "train.tsv", "dev": "dev.tsv"},
                         hint="CCGbank (LDC2005T13) is licensed by the LDC and cannot be downloaded here: convert "
                              "it yourself to one sentence per line, 'tokens<TAB>supertags' (both space-separated, "
                              "jiant's ccg format), and save train.tsv and dev.tsv in {dir}"),
        train=TrainConfig(epochs=15, lr=2e-5, batch_size=32, max_length=256),
    ),
    TaskSpec(
        name="udpos", family="tagging", phases=("xtreme",), metric="f1", scorer="seqeval",
        group="structured prediction",
        description="UD v2.5 part-of-speech tagging (UPOS): English train, zero-shot in 33 languages",
        labels=UPOS, languages=XTREME_LANGUAGES["udpos"],
        # Globs take every treebank of a language, as XTREME concatenates them.
        files=FileSource(folder="udpos", reader="conllu", hint=_UD_HINT, splits={
            "train": "UD_{Lang}-*/*-ud-train.conllu", "dev": "UD_{Lang}-*/*-ud-dev.conllu",
            "test": "UD_{Lang}-*/*-ud-test.conllu"}),
        missing_splits={"dev": ("kk", "th", "tl", "yo")},  # UD v2.5 has test data only for these
        hub=HubSource(path="google/xtreme", name="udpos.{Lang}", fields={"tokens": "tokens", "tags": "pos_tags"},
                      splits={"train": "train", "dev": "validation", "test": "test"}),
        train=TrainConfig(epochs=10, lr=1e-5, batch_size=32, max_length=256),  # jiant's XTREME recipe (facts 1.6)
    ),
    TaskSpec(
        name="panx", family="tagging", phases=("xtreme",), metric="f1", scorer="seqeval",
        group="structured prediction",
        description="PAN-X / WikiANN NER (PER, ORG, LOC; IOB2): English train, zero-shot in 40 languages",
        labels=PANX_TAGS, languages=XTREME_LANGUAGES["panx"],
        files=FileSource(folder="panx", reader="panx_iob", hint=_PANX_HINT, splits={
            "train": "{lang}/train", "dev": "{lang}/dev", "test": "{lang}/test"}),
        hub=HubSource(path="google/xtreme", name="PAN-X.{lang}", fields={"tokens": "tokens", "tags": "ner_tags"},
                      splits={"train": "train", "dev": "validation", "test": "test"}),
        train=TrainConfig(epochs=10, lr=1e-5, batch_size=32, max_length=256),
    ),
]
