"""The multiple-choice family: pairing, truncation, the [B, C] head, prediction, scoring, hub rows.

Expected values are written out by hand in the comments."""
import math
from pathlib import Path

import pytest
import torch

from stilts_xling.model import TINY_TOKENIZER, load_tokenizer
from stilts_xling.readers import READERS
from stilts_xling.tasks.registry import FAMILIES, get_task

ASSETS = Path(__file__).resolve().parent / "assets"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FAMILY = FAMILIES["multiple_choice"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(TINY_TOKENIZER))


def dev_examples(name):
    spec = get_task(name)
    return spec, READERS[spec.files.reader](ASSETS / spec.files.folder / spec.files.splits["dev"])


# First dev record of each fixture: (first segment, second segment of choice 0, gold label), as jiant pairs them.
PAIRS = {
    # HellaSwag: prompt = ctx_a; choice = ctx_b + " " + ending.
    "hellaswag": ("A skier stands at the top of a snowy slope.", "the skier orders a pizza.", 3),
    # CommonsenseQA: prompt = question stem; choice = answer text; answerKey D -> index 3.
    "commonsenseqa": ("What do you need to unlock a door?", "spoon", 3),
    # Cosmos QA: prompt = context + " " + question (the csv context keeps its CRLF line break).
    "cosmosqa": ("The power went out during the storm .\r\nWe lit candles and played cards . "
                 "What might they have done next ?", "Watched television .", 3),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_featurize_pairs_every_choice_with_the_prompt(tok, name):
    spec, examples = dev_examples(name)
    features = FAMILY.featurize(spec, examples, tok, 256)
    assert len(features) == len(examples)
    first, second, label = PAIRS[name]
    f = features[0]
    assert f["labels"] == label and f["example_index"] == 0
    assert len(f["input_ids"]) == spec.num_choices
    assert f["input_ids"][0] == tok(first, second)["input_ids"]
    for c, choice in enumerate(examples[0]["choices"]):
        assert f["input_ids"][c] == tok(first, choice)["input_ids"]
    assert all(len(feat["input_ids"]) == spec.num_choices for feat in features)


def test_context_is_cut_on_its_left_so_question_and_choice_survive(tok):
    spec, examples = dev_examples("cosmosqa")
    full = FAMILY.featurize(spec, examples[:1], tok, 256)[0]["input_ids"][0]
    # 89 tokens in full: <s> + context (51) + " What might they have done next ?" (24) + </s></s> +
    # "Watched television ." (13) + </s>. At 48 the context keeps its last 48 - 4 - 24 - 13 = 7 tokens.
    cut = FAMILY.featurize(spec, examples[:1], tok, 48)[0]["input_ids"][0]
    assert len(full) == 89 and len(cut) == 48
    assert cut[0] == tok.cls_token_id and full[-47:] == cut[1:]
    assert tok.decode(cut).endswith("What might they have done next ?</s></s> Watched television .</s>")


def test_choice_longer_than_the_room_falls_back_instead_of_crashing(tok):
    spec = get_task("commonsenseqa")
    ex = {"id": "x", "context": "", "question": "Which one?", "label": 0,
          "choices": ["a very long answer " * 10, "b", "c", "d", "e"]}
    (f,) = FAMILY.featurize(spec, [ex], tok, 16)
    assert all(len(ids) <= 16 for ids in f["input_ids"])
    assert f["input_ids"][1] == tok("Which one?", "b")["input_ids"]  # short choices keep only_first


def test_wrong_number_of_choices_is_a_clear_error(tok):
    ex = {"id": "q7", "context": "", "question": "?", "choices": ["a", "b"], "label": 0}
    with pytest.raises(ValueError, match="'q7' has 2 choices, the task has 5"):
        FAMILY.featurize(get_task("commonsenseqa"), [ex], tok, 64)


def test_unlabeled_examples_get_ignore_index(tok):
    ex = {"id": "t", "context": "c", "question": "", "choices": ["a", "b", "c", "d"], "label": None}
    assert FAMILY.featurize(get_task("hellaswag"), [ex], tok, 64)[0]["labels"] == -100


def scalar_head():
    """The family's head with weights set so that score = tanh(pooled[0]) (eval mode: no dropout)."""
    head = FAMILY.make_head(get_task("hellaswag"), 4).eval()
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(4, 4), (1, 4)]  # pooled -> 1 score
    with torch.no_grad():
        linears[0].weight.copy_(torch.eye(4))
        linears[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0]]))
        for m in linears:
            m.bias.zero_()
    return head


def test_forward_gives_batch_by_choice_logits_and_cross_entropy():
    head = scalar_head()
    scores = torch.tensor([[0.5, -0.5], [0.0, 0.0]])  # B=2 examples, C=2 choices
    pooled = torch.zeros(4, 4)
    pooled[:, 0] = torch.atanh(scores.flatten())  # rows in model.py's [B*C] order
    batch = {"input_ids": torch.zeros(2, 2, 5, dtype=torch.long), "labels": torch.tensor([0, 1])}
    loss, logits = FAMILY.forward(head, None, pooled, batch)
    assert logits.shape == (2, 2)
    torch.testing.assert_close(logits, scores)
    # ex 0: -log softmax(0.5, -0.5)[0] = log(1 + e^-1); ex 1: two equal scores -> log 2.
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, rel=1e-5)
    batch["labels"] = torch.tensor([-100, 1])
    assert FAMILY.forward(head, None, pooled, batch)[0].item() == pytest.approx(math.log(2), rel=1e-5)
    batch["labels"] = torch.tensor([-100, -100])  # nothing labelled: loss 0, not NaN (and no host sync)
    assert FAMILY.forward(head, None, pooled, batch)[0].item() == 0.0
    del batch["labels"]
    assert FAMILY.forward(head, None, pooled, batch)[0] is None  # prediction


def test_predict_argmax_and_accuracy():
    spec = get_task("cosmosqa")
    examples = [{"id": i, "label": g} for i, g in (("a", 1), ("b", 1), ("c", 3), ("d", None))]
    features = [{"example_index": i} for i in range(4)]
    logits = [torch.tensor(r) for r in ([0.1, 0.9, 0, 0], [2.0, 1, 0, 0], [0, 0, 0, 3.0], [5.0, 0, 0, 0])]
    preds = FAMILY.predict(spec, examples, features, logits)
    assert preds == {"a": 1, "b": 0, "c": 3, "d": 0}
    # The unlabeled "d" is not scored: 2 of 3 right.
    assert FAMILY.score(spec, preds, examples, "en") == {"accuracy": pytest.approx(200 / 3)}


# Hub rows as Rowan/hellaswag, tau/commonsense_qa and allenai/cosmos_qa give them, built from the same
# fixture records; the hook must give what the file readers give.
HUB_ROWS = {
    "hellaswag": {"ind": 21, "ctx_a": "A skier stands at the top of a snowy slope.", "ctx_b": "the skier",
                  "endings": ["orders a pizza.", "climbs a palm tree.", "swims across the slope.",
                              "pushes off and glides down the hill."], "label": "3"},
    "commonsenseqa": {"id": "fx1001", "question": "What do you need to unlock a door?", "answerKey": "D",
                      "choices": {"label": list("ABCDE"), "text": ["spoon", "sock", "lamp", "key", "cloud"]}},
    "cosmosqa": {"id": "fxcos-1001", "context": "The power went out during the storm .\r\nWe lit candles and "
                 "played cards .", "question": "What might they have done next ?", "answer0": "Watched television .",
                 "answer1": "Went swimming .", "answer2": "Turned on the oven .",
                 "answer3": "Waited for the power to return .", "label": 3},
}


@pytest.mark.parametrize("name", sorted(HUB_ROWS))
def test_hub_rows_normalize_like_the_file_readers(name):
    spec, examples = dev_examples(name)
    assert FAMILY.hub_example(spec, HUB_ROWS[name], 0) == examples[0]


@pytest.mark.parametrize("name,unlabeled", [("hellaswag", {"label": ""}), ("commonsenseqa", {"answerKey": ""}),
                                            ("cosmosqa", {"label": -1})])
def test_hub_test_rows_have_no_label(name, unlabeled):
    assert FAMILY.hub_example(get_task(name), {**HUB_ROWS[name], **unlabeled}, 0)["label"] is None


def test_specs_carry_the_companion_study_defaults():
    expect = {"hellaswag": (4, 7, 1e-5, 16), "cosmosqa": (4, 15, 1e-5, 16), "commonsenseqa": (5, 15, 1e-5, 32)}
    for name, (choices, epochs, lr, batch) in expect.items():
        spec = get_task(name)
        assert spec.family == "multiple_choice" and spec.phases == ("intermediate",) and spec.metric == "accuracy"
        assert (spec.num_choices, spec.train.epochs, spec.train.lr, spec.train.batch_size) == (choices, epochs, lr, batch)
        assert spec.train.max_length <= 256 and "{dir}" in spec.files.hint


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data samples not present at {SHARED}")
@pytest.mark.parametrize("name,folder,split", [("hellaswag", "hellaswag", "hellaswag_val.jsonl"),
                                               ("commonsenseqa", "commonsenseqa", "dev_rand_split.jsonl"),
                                               ("cosmosqa", "cosmosqa", "valid.csv")])
def test_real_samples_featurize_within_max_length(tok, name, folder, split):
    spec = get_task(name)
    examples = READERS[spec.files.reader](SHARED / folder / split)
    features = FAMILY.featurize(spec, examples, tok, 128)
    assert len(features) == len(examples)
    for f, ex in zip(features, examples):
        assert len(f["input_ids"]) == spec.num_choices and f["labels"] == ex["label"]
        assert all(2 < len(ids) <= 128 and ids[-1] == tok.sep_token_id for ids in f["input_ids"])
