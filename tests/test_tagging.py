"""The tagging family: first-sub-token alignment, long-sentence windows, the token head, word-level
prediction, scores, the CCG tag set from training data, specs, real samples, and the CLI end to end.

Expected values are written out by hand in the comments."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from stilts_xling.config import ExperimentConfig, TaskOptions
from stilts_xling.data import load_examples, split_paths
from stilts_xling.model import TINY_TOKENIZER, load_tokenizer
from stilts_xling import readers
from stilts_xling.readers import READERS
from stilts_xling.tasks.registry import FAMILIES, get_task

ASSETS = Path(__file__).resolve().parent / "assets"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FAMILY = FAMILIES["tagging"]
PANX = get_task("panx")

# Tiny byte-level BPE tokenizer, each word preceded by its space: "Hello" -> Ġ H el l o (5),
# "unbelievable" -> 10 pieces, "北京大学" -> 11 byte pieces, "الطالب" -> 3 pieces.
WORDS = ["Hello", "unbelievable", "北京大学", "الطالب"]
SIZES = [5, 10, 11, 3]
TAGS = ["O", "B-PER", "B-LOC", "I-LOC"]  # ids 0, 1, 5, 6 in PAN-X order


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(TINY_TOKENIZER))


def test_labels_sit_on_each_words_first_sub_token(tok):
    (f,) = FAMILY.featurize(PANX, [{"id": "s", "tokens": WORDS, "tags": TAGS}], tok, 256)
    # <s> at 0, then the words back to back: first pieces at 1, 1+5, 6+10, 16+11; </s> last.
    assert f["first_tokens"] == [1, 6, 16, 27] and len(f["input_ids"]) == 1 + sum(SIZES) + 1
    assert (f["word_offset"], f["num_words"], f["example_index"]) == (0, 4, 0)
    assert [f["labels"][p] for p in f["first_tokens"]] == [0, 1, 5, 6]
    assert sum(label != -100 for label in f["labels"]) == 4  # every other position is ignored
    assert f["input_ids"][0] == tok.cls_token_id and f["input_ids"][-1] == tok.sep_token_id
    bounds = f["first_tokens"] + [len(f["input_ids"]) - 1]
    for word, a, b in zip(WORDS, bounds, bounds[1:]):
        assert tok.decode(f["input_ids"][a:b]).strip() == word  # the pieces of a word are its own


def test_ccg_tags_the_first_sub_token_that_holds_text_as_jiant_aligns_it(tok):
    # Pieces: Ġ H el l o | Ġ u n bel ... | Ġ åĮ Ĺ ... (11) | ĠØ§ÙĦØ· Ø§ÙĦ Ø¨ | Ġ ,  -- a lone "Ġ" (XLM-R's lone
    # "▁") decodes to a space, so jiant's CCG alignment tags the piece after it; the Arabic word's first
    # piece holds text itself. UD-POS/PAN-X keep the first piece (XTREME run_tag, jiant udpos).
    words = WORDS + [","]
    ccg = dataclasses.replace(get_task("ccg"), labels=("A", "B"))
    (f,) = FAMILY.featurize(ccg, [{"id": "s", "tokens": words, "tags": ["A", "B", "A", "B", "A"]}], tok, 256)
    assert f["first_tokens"] == [2, 7, 17, 27, 31]
    assert [f["labels"][p] for p in f["first_tokens"]] == [0, 1, 0, 1, 0] and sum(x != -100 for x in f["labels"]) == 5
    assert [tok.convert_ids_to_tokens(f["input_ids"][p]) for p in f["first_tokens"]][::4] == ["H", ","]
    (g,) = FAMILY.featurize(PANX, [{"id": "s", "tokens": words, "tags": TAGS + ["O"]}], tok, 256)
    assert g["first_tokens"] == [1, 6, 16, 27, 30]


def test_long_sentences_are_split_into_windows_not_truncated(tok):
    # max_length 12 leaves 10 positions after <s> </s>: "北京大学" (11 pieces) cannot fit anywhere and
    # becomes <unk> (XTREME does the same); windows: [Hello] (5; +10 > 10), [unbelievable] (10; +1 > 10),
    # [<unk>, الطالب] (1 + 3).
    ex = {"id": "s", "tokens": WORDS, "tags": TAGS}
    features = FAMILY.featurize(PANX, [ex], tok, 12)
    assert [(f["word_offset"], f["num_words"]) for f in features] == [(0, 1), (1, 1), (2, 2)]
    assert all(len(f["input_ids"]) <= 12 for f in features)
    assert features[2]["input_ids"][1] == tok.unk_token_id and features[2]["first_tokens"] == [1, 2]
    assert [[f["labels"][p] for p in f["first_tokens"]] for f in features] == [[0], [1], [5, 6]]
    # One logit row per position; argmax of class k at the first pieces: the windows join back in order.
    logits = []
    for f, classes in zip(features, ([3], [4], [0, 5])):
        row = torch.zeros(len(f["input_ids"]), len(PANX.labels))
        for p, k in zip(f["first_tokens"], classes):
            row[p, k] = 1.0
        logits.append(row)
    preds = FAMILY.predict(PANX, [ex], features, logits)
    assert preds == {"s": ["B-ORG", "I-ORG", "O", "B-LOC"]}
    assert len(preds["s"]) == len(ex["tokens"])  # seqeval needs one tag per gold word


def test_predict_maps_first_token_logits_to_word_tags(tok):
    examples = [{"id": "a", "tokens": ["Berlin", "is", "big"], "tags": ["B-LOC", "O", "O"]},
                {"id": "b", "tokens": ["Jonas"], "tags": ["B-PER"]}]
    features = FAMILY.featurize(PANX, examples, tok, 64)
    # Logits favour class 2 (I-PER) everywhere except the first pieces; only those may count.
    logits = []
    for f, classes in zip(features, ([5, 0, 0], [1])):
        row = torch.zeros(len(f["input_ids"]), 7)
        row[:, 2] = 5.0
        for p, k in zip(f["first_tokens"], classes):
            row[p, k] = 9.0
        logits.append(row)
    assert FAMILY.predict(PANX, examples, features, logits) == {"a": ["B-LOC", "O", "O"], "b": ["B-PER"]}


def test_token_head_forward_and_masked_loss():
    head = FAMILY.make_head(PANX, 2)
    assert isinstance(head[-1], torch.nn.Linear) and head[-1].out_features == 7
    head = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(2, 2)).eval()  # the head's shape, K=2
    with torch.no_grad():
        head[1].weight.copy_(torch.eye(2))
        head[1].bias.zero_()
    hidden = torch.tensor([[[7.0, -7.0], [0.0, 0.0], [0.0, math.log(3)]]])  # [B=1, T=3, H=2]
    batch = {"labels": torch.tensor([[-100, 0, 1]])}
    loss, logits = FAMILY.forward(head, hidden, None, batch)
    assert logits.shape == (1, 3, 2)
    # Position 0 is ignored; position 1: log 2; position 2: -log(3/4) = log(4/3). Mean = log(8/3) / 2.
    assert loss.item() == pytest.approx(math.log(8 / 3) / 2, rel=1e-5)
    assert FAMILY.forward(head, hidden, None, {"labels": torch.full((1, 3), -100)})[0].item() == 0.0
    assert FAMILY.forward(head, hidden, None, {})[0] is None  # prediction


def test_scores_hand_computed():
    examples = [{"id": "a", "tokens": list("wxyz"), "tags": ["B-PER", "I-PER", "O", "B-LOC"]},
                {"id": "u", "tokens": ["x"], "tags": None}]  # unlabeled: not scored
    preds = {"a": ["B-PER", "I-PER", "O", "B-ORG"], "u": ["O"]}
    # Entities gold {PER 0-1, LOC 3}, predicted {PER 0-1, ORG 3}: P = R = F1 = 1/2; tokens 3 of 4.
    assert FAMILY.score(PANX, preds, examples, "en") == pytest.approx(
        {"precision": 50.0, "recall": 50.0, "f1": 50.0, "accuracy": 75.0})
    # UPOS through seqeval (XTREME): gold NOUN VERB PUNCT = 3 chunks; predicted NOUN NOUN PUNCT = 2 chunks
    # (a run of one tag merges), of which PUNCT is right: P = 1/2, R = 1/3, F1 = 2/5; tokens 2 of 3.
    pos = [{"id": "p", "tokens": list("abc"), "tags": ["NOUN", "VERB", "PUNCT"]}]
    assert FAMILY.score(get_task("udpos"), {"p": ["NOUN", "NOUN", "PUNCT"]}, pos, "de") == pytest.approx(
        {"precision": 50.0, "recall": 100 / 3, "f1": 40.0, "accuracy": 200 / 3})


def test_ccg_tag_set_comes_from_training_and_unseen_tags_count_as_errors(tok):
    spec = get_task("ccg")
    assert spec.labels_from_train and spec.labels == ()
    with pytest.raises(ValueError, match="call fit_labels first"):
        FAMILY.featurize(spec, READERS["ccg_tsv"](ASSETS / "ccg" / "dev.tsv"), tok, 256)
    train = READERS["ccg_tsv"](ASSETS / "ccg" / "train.tsv")
    dev = READERS["ccg_tsv"](ASSETS / "ccg" / "dev.tsv")
    spec = FAMILY.fit_labels(spec, train)  # what the pipeline does before featurizing
    # 3 training sentences, 8 distinct supertags, sorted.
    assert spec.labels == ("((S[dcl]\\NP)/NP)/NP", "(S[dcl]\\NP)/NP", ".", "N", "N/N", "NP", "NP[nb]/N",
                           "S[dcl]\\NP")
    assert FAMILY.make_head(spec, 4)[-1].out_features == 8
    # Dev "It rained ." = NP[expl] S[dcl]\NP[expl] . : the first two are unseen -> no loss target.
    feats = FAMILY.featurize(spec, dev, tok, 256)
    rained = [f for f in feats if f["example_index"] == 2][0]
    assert [rained["labels"][p] for p in rained["first_tokens"]] == [-100, -100, 2]
    preds = FAMILY.predict(spec, dev, feats, [torch.zeros(len(f["input_ids"]), 8) for f in feats])
    assert preds["2"] == ["((S[dcl]\\NP)/NP)/NP"] * 3  # all-zero logits: argmax = class 0
    preds["2"] = ["NP", "S[dcl]\\NP", "."]
    # Token accuracy (jiant's CCG metric) on this one sentence: only "." is right -> 1 of 3.
    assert FAMILY.score(spec, {"2": preds["2"]}, dev[2:], "en") == {"accuracy": pytest.approx(100 / 3)}


def test_hub_rows_map_tag_ids_to_names():
    row = {"tokens": ["Berlin", "liegt", "."], "pos_tags": [11, 15, 12]}  # UPOS in the hub's alphabetical order
    assert FAMILY.hub_example(get_task("udpos"), row, 4) == {"id": "4", "tokens": ["Berlin", "liegt", "."],
                                                             "tags": ["PROPN", "VERB", "PUNCT"]}
    row = {"tokens": ["Jonas", "Meyer", "lacht", "in", "Rom"], "ner_tags": [1, 2, 0, 0, 5], "langs": ["de"] * 5}
    assert FAMILY.hub_example(PANX, row, 0)["tags"] == ["B-PER", "I-PER", "O", "O", "B-LOC"]


def test_specs_languages_files_and_hyperparameters():
    udpos, ccg = get_task("udpos"), get_task("ccg")
    assert len(udpos.languages) == 33 and len(PANX.languages) == 40
    assert udpos.group == PANX.group == "structured prediction" and udpos.metric == PANX.metric == "f1"
    assert udpos.train_task is None and udpos.phases == ("xtreme",) and len(udpos.labels) == 17
    assert udpos.labels[:3] == ("ADJ", "ADP", "ADV") and PANX.labels[:3] == ("O", "B-PER", "I-PER")  # hub order
    assert set(udpos.labels) == readers.UPOS_TAGS and set(PANX.labels) == readers.PANX_TAGS  # what readers accept
    assert (ccg.phases, ccg.metric, ccg.labels, ccg.hub) == (("intermediate",), "accuracy", (), None)
    assert (ccg.train.epochs, ccg.train.lr, ccg.train.batch_size) == (15, 2e-5, 32)
    assert (udpos.train.epochs, udpos.train.batch_size, udpos.train.max_length) == (10, 32, 256)
    assert (PANX.train.epochs, PANX.train.batch_size) == (10, 32)
    assert "LDC" in ccg.files.hint and "tokens<TAB>supertags" in ccg.files.hint
    assert udpos.hub.name.format(Lang="English") == "udpos.English" and PANX.hub.name == "PAN-X.{lang}"
    cfg = ExperimentConfig(data_dir=str(ASSETS))
    assert split_paths(udpos, "train", "en", cfg) == [ASSETS / "udpos/UD_English-EWT/en_ewt-ud-train.conllu"]
    for lang in ("en", "de", "ar"):
        assert load_examples(udpos, "dev", lang, cfg) and load_examples(PANX, "test", lang, cfg)


def test_treebanks_that_repeat_sentence_ids_keep_their_own_predictions(tmp_path):
    # UD_Chinese-GSD and -GSDSimp number their sentences alike (dev-s1, ...); a language's dev split reads both.
    udpos = get_task("udpos")
    source = (ASSETS / "udpos/UD_German-GSD/de_gsd-ud-dev.conllu").read_text(encoding="utf-8")
    for bank in ("GSD", "GSDCopy"):
        folder = tmp_path / "udpos" / f"UD_German-{bank}"
        folder.mkdir(parents=True)
        (folder / f"de_{bank.lower()}-ud-dev.conllu").write_text(source, encoding="utf-8")
    examples = load_examples(udpos, "dev", "de", ExperimentConfig(data_dir=str(tmp_path)))
    half = len(examples) // 2
    assert half and len({ex["id"] for ex in examples}) == len(examples) == 2 * half
    assert [ex["id"] for ex in examples[half:]] == [f"{ex['id']}#2" for ex in examples[:half]]
    # Right on the first treebank, all NOUN on its copy: each sentence is scored with its own prediction.
    preds = {ex["id"]: list(ex["tags"]) if i < half else ["NOUN"] * len(ex["tags"]) for i, ex in enumerate(examples)}
    tags = [t for ex in examples for t in ex["tags"]]
    right = len(tags) // 2 + sum(t == "NOUN" for t in tags[len(tags) // 2:])
    assert FAMILY.score(udpos, preds, examples, "de")["accuracy"] == pytest.approx(100 * right / len(tags))


def check_features(spec, examples, features):
    """Windows tile every sentence and each word's first piece carries exactly its gold tag."""
    tag_ids = {t: i for i, t in enumerate(spec.labels)}
    covered = {}
    for f in features:
        ex = examples[f["example_index"]]
        assert len(f["input_ids"]) == len(f["labels"]) and len(f["first_tokens"]) == f["num_words"]
        gold = ex["tags"][f["word_offset"]:f["word_offset"] + f["num_words"]]
        assert [f["labels"][p] for p in f["first_tokens"]] == [tag_ids[t] for t in gold]
        assert sum(label != -100 for label in f["labels"]) == f["num_words"]
        covered.setdefault(f["example_index"], []).append((f["word_offset"], f["num_words"]))
    for i, ex in enumerate(examples):
        spans = covered[i]
        assert spans[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))
        assert spans[-1][0] + spans[-1][1] == len(ex["tokens"])


needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data samples not present at {SHARED}")


@needs_shared
@pytest.mark.parametrize("lang", ["en", "de", "ja"])
@pytest.mark.parametrize("max_length", [256, 24])  # 24 forces windows on most real sentences
def test_real_udpos_dev_featurizes_consistently(tok, lang, max_length):
    spec = get_task("udpos")
    examples = load_examples(spec, "dev", lang, ExperimentConfig(data_dir=str(SHARED)))
    features = FAMILY.featurize(spec, examples, tok, max_length)
    check_features(spec, examples, features)
    assert all(len(f["input_ids"]) <= max_length for f in features)


@needs_shared
@pytest.mark.parametrize("lang", ["ar", "de", "en", "hi", "ja", "sw", "zh"])
def test_real_panx_featurizes_consistently(tok, lang):
    options = TaskOptions(data_dir=str(SHARED / "panx_wikiann"))
    for split in ("train", "dev", "test"):
        examples = load_examples(PANX, split, lang, ExperimentConfig(), options)
        check_features(PANX, examples, FAMILY.featurize(PANX, examples, tok, 256))


CONFIG = """\
run_dir: {run_dir}
data_dir: {assets}
offline: true
model: {{name: "tiny:xlm-roberta"}}
intermediate:
  tasks: [hellaswag, commonsenseqa, cosmosqa, ccg]
  train: {{epochs: 1, max_steps: 3, batch_size: 2, max_length: 64, eval_every: 3, patience: 0, lr: 1.0e-3}}
xtreme:
  tasks: [udpos, panx]
  splits: [dev, test]
  train: {{epochs: 1, max_steps: 2, batch_size: 2, max_length: 64, eval_every: 2, patience: 0, lr: 1.0e-3}}
  languages: {{udpos: [en, de, ar], panx: [en, de, ar]}}
"""


def test_cli_run_writes_rows_for_every_task_and_language(tmp_path):
    from typer.testing import CliRunner

    from stilts_xling.cli import app

    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(run_dir=tmp_path / "run", assets=ASSETS))
    result = CliRunner().invoke(app, ["run", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    inter = {r["task"]: r for r in rows if r["phase"] == "intermediate"}
    assert set(inter) == {"hellaswag", "commonsenseqa", "cosmosqa", "ccg"}
    assert all(r["metric"] == "accuracy" and 0 <= r["value"] <= 100 for r in inter.values())
    xtreme = {(r["task"], r["language"], r["split"]) for r in rows if r["phase"] == "xtreme" and r["metric"] == "f1"}
    assert xtreme == {(t, lang, s) for t in ("udpos", "panx") for lang in ("en", "de", "ar") for s in ("dev", "test")}
    assert "udpos dev f1" in result.output and "panx test f1" in result.output
