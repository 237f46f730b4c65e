"""GLUE as a target set: MCC and Pearson/Spearman by hand, the GLUE readers on their fixtures, the
regression family, the specs, and the smoke config through the real CLI."""
from pathlib import Path

import pytest
import torch

from conftest import REPO
from stilts_xling import scoring
from stilts_xling.metrics import average_ranks, matthews_corr, pearson_spearman
from stilts_xling.model import TINY_TOKENIZER, load_tokenizer
from stilts_xling.readers import READERS, DataError
from stilts_xling.results import read_rows
import math

from stilts_xling.data import collate
from stilts_xling.tasks.registry import FAMILIES, get_task

ASSETS = Path(__file__).resolve().parent / "assets"
SMOKE_GLUE = REPO / "configs" / "smoke" / "glue.yaml"
GLUE = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli")
approx = pytest.approx


# ------------------------------------------------------------------------------------------ metrics

def test_mcc_binary():
    # gold 1 0 0 0 1 / pred 1 1 0 0 1: TP 2, FP 1, TN 2, FN 0.
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 4 / sqrt(3*2*3*2) = 4/6.
    assert matthews_corr([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == {"mcc": approx(100 * 4 / 6)}
    # Everything wrong on a balanced set: TP = TN = 0, FP = FN = 2 -> -4/4 = -1.
    assert matthews_corr(["1", "1", "0", "0"], ["0", "0", "1", "1"]) == {"mcc": approx(-100.0)}


def test_mcc_multiclass_and_constant_predictions():
    # s = 5, c = 4 correct; predicted counts a2 b2 c1, gold counts a1 b2 c2.
    # (4*5 - (2*1 + 2*2 + 1*2)) / sqrt((25 - 9) * (25 - 9)) = 12/16.
    assert matthews_corr(list("abcab"), list("abccb")) == {"mcc": approx(75.0)}
    # One predicted class: the denominator is 0 and sklearn returns 0.
    assert matthews_corr(["1"] * 4, ["1", "0", "1", "0"]) == {"mcc": 0.0}
    with pytest.raises(ValueError):
        matthews_corr([1], [1, 0])


def test_average_ranks_share_tied_positions():
    # Sorted: 1 (pos 1), 2 and 2 (pos 2, 3 -> 2.5 each), 3 (pos 4); input order kept.
    assert average_ranks([3, 2, 1, 2]) == [4.0, 2.5, 1.0, 2.5]
    assert average_ranks([5, 5, 5]) == [2.0, 2.0, 2.0]


def test_pearson_spearman_by_hand():
    # x = 1 2 3 10, y = 1 2 3 4. Pearson: dx = -3 -2 -1 6, dy = -1.5 -.5 .5 1.5;
    # sxy = 4.5 + 1 - .5 + 9 = 14, sxx = 50, syy = 5 -> 14 / sqrt(250). Spearman: same order -> 1.
    out = pearson_spearman([1, 2, 3, 10], [1, 2, 3, 4])
    pearson = 100 * 14 / 250 ** 0.5
    assert out == {"pearson": approx(pearson), "spearman": approx(100.0),
                   "pearson_spearman": approx((pearson + 100) / 2)}


def test_spearman_with_ties_and_constant_input():
    # x = 1 2 2 3 -> ranks 1 2.5 2.5 4 (mean 2.5, d = -1.5 0 0 1.5); y ranks 1 2 3 4 (d = -1.5 -.5 .5 1.5).
    # sxy = 2.25 + 2.25 = 4.5, sxx = 4.5, syy = 5 -> 4.5 / sqrt(22.5).
    assert pearson_spearman([1, 2, 2, 3], [1, 2, 3, 4])["spearman"] == approx(100 * 4.5 / 22.5 ** 0.5)
    # scipy gives nan for a constant side; a 0 keeps model selection well defined.
    assert pearson_spearman([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0,
                                                                   "pearson_spearman": 0.0}


# ------------------------------------------------------------------------------------------ readers

def read(fmt, rel):
    return READERS[fmt](ASSETS / "glue" / rel)


@pytest.mark.parametrize("fmt,rel,first,n", [
    ("glue_cola_tsv", "CoLA/train.tsv", ("0", "Mary read the book yesterday.", None, "1"), 16),
    ("glue_sst2_tsv", "SST-2/dev.tsv", ("0", "a wonderful little film ", None, "1"), 8),  # trailing space kept
    ("glue_mrpc_tsv", "MRPC/dev.tsv", ("0", "Mary bought the book on Monday , the company said .",
                                       "On Monday , Mary bought the book , the company said .", "1"), 8),
    ("glue_qnli_tsv", "QNLI/dev.tsv", ("0", "What did Mary buy?", "Mary bought the book at the market.",
                                       "entailment"), 8),
    ("glue_rte_tsv", "RTE/dev.tsv", ("0", "Mary, who lives in Oslo, painted the book last week.",
                                     "Mary painted the book.", "entailment"), 8),
    ("glue_wnli_tsv", "WNLI/dev.tsv", ("0", "Mary could not lift John because he was so weak.",
                                       "Mary was so weak.", "1"), 8),
    ("glue_stsb_tsv", "STS-B/dev.tsv", ("0", "A man is playing the book.", "A man is playing the book.", 5.0), 8),
])
def test_glue_readers_on_fixtures(fmt, rel, first, n):
    records = read(fmt, rel)
    assert len(records) == n
    assert records[0] == dict(zip(("id", "text_a", "text_b", "label"), first))
    assert len({r["id"] for r in records}) == n


def test_glue_labels_in_file_order():
    assert [r["label"] for r in read("glue_cola_tsv", "CoLA/dev.tsv")] == ["1", "0"] * 4
    assert [r["label"] for r in read("glue_rte_tsv", "RTE/train.tsv")][:2] == ["entailment", "not_entailment"]
    # STS-B keeps the three decimals of the file (2.615).
    assert [r["label"] for r in read("glue_stsb_tsv", "STS-B/dev.tsv")] == [5.0, 4.75, 3.8, 2.4, 2.615, 1.0, 0.5, 0.0]


def test_glue_reader_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "cola.tsv"
    bad.write_text("gj04\t1\t\tFine.\nindex\tsentence\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"cola.tsv:2: expected 4 tab-separated columns"):
        READERS["glue_cola_tsv"](bad)
    stsb = tmp_path / "stsb.tsv"
    stsb.write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\tfive\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"stsb.tsv:2: score 'five' is not a number"):
        READERS["glue_stsb_tsv"](stsb)
    rte = tmp_path / "rte.tsv"
    rte.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"rte.tsv:2: label 'contradiction' is not one of"):
        READERS["glue_rte_tsv"](rte)


# ------------------------------------------------------------------------------------------ regression family

REG = FAMILIES["regression"]


def test_regression_features_carry_float_scores():
    tok = load_tokenizer(str(TINY_TOKENIZER))
    spec = get_task("stsb")
    examples = read("glue_stsb_tsv", "STS-B/dev.tsv")[:2] + [{"id": "t", "text_a": "a", "text_b": "b", "label": None}]
    features = REG.featurize(spec, examples, tok, 64)
    assert [f["labels"] for f in features][:2] == [5.0, 4.75] and math.isnan(features[2]["labels"])
    batch = collate(features, tok.pad_token_id)
    assert batch["labels"].dtype == torch.float32 and batch["labels"][:2].tolist() == [5.0, 4.75]
    assert features[0]["input_ids"] == tok("A man is playing the book.", "A man is playing the book.")["input_ids"]


def test_regression_forward_is_mse_over_labelled_rows():
    pooled = torch.tensor([[1.0], [2.0], [0.5]])
    labels = torch.tensor([1.5, 2.0, float("nan")])
    loss, scores = REG.forward(lambda p: p[:, :1], None, pooled, {"labels": labels})
    # ((1 - 1.5)^2 + (2 - 2)^2) / 2 = 0.125; the unlabelled row is left out.
    assert loss.item() == approx(0.125) and scores.tolist() == [1.0, 2.0, 0.5]
    assert REG.forward(lambda p: p[:, :1], None, pooled, {})[0] is None


def test_regression_predict_and_score():
    spec = get_task("stsb")
    examples = [{"id": i, "text_a": "", "text_b": "", "label": g} for i, g in zip("abcd", [1.0, 2.0, 3.0, 4.0])]
    features = [{"example_index": i} for i in range(4)]
    preds = REG.predict(spec, examples, features, [torch.tensor(v) for v in (1.0, 2.0, 3.0, 10.0)])
    assert preds == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 10.0}
    scores = REG.score(spec, preds, examples, "en")  # the hand example above
    assert scores["pearson"] == approx(100 * 14 / 250 ** 0.5) and scores["spearman"] == approx(100.0)


def test_regression_hub_rows():
    spec = get_task("stsb")
    row = {"sentence1": "A man sings.", "sentence2": "A man is singing.", "label": 4.8, "idx": 7}
    assert REG.hub_example(spec, row, 0) == {"id": "7", "text_a": "A man sings.", "text_b": "A man is singing.",
                                             "label": 4.8}
    assert REG.hub_example(spec, {**row, "label": -1.0}, 0)["label"] is None  # GLUE's unlabelled test split


def test_single_sentence_hub_rows_featurize_without_text_b():
    tok = load_tokenizer(str(TINY_TOKENIZER))
    spec = get_task("cola")
    features = FAMILIES["classification"].featurize(spec, [{"id": "0", "text_a": "Mary left.", "label": "1"}], tok, 32)
    assert features[0]["input_ids"] == tok("Mary left.")["input_ids"] and features[0]["labels"] == 1


def test_cola_scores_mcc_and_accuracy():
    spec = get_task("cola")
    examples = [{"id": str(i), "label": g} for i, g in enumerate("10001")]
    preds = dict(zip("01234", "11001"))
    assert FAMILIES["classification"].score(spec, preds, examples, "en") == {"accuracy": approx(80.0),
                                                                             "mcc": approx(100 * 4 / 6)}


def test_hub_rows_load_for_single_sentence_and_regression_tasks(monkeypatch):
    import datasets

    from stilts_xling.config import ExperimentConfig
    from stilts_xling.data import load_examples

    cola = datasets.Dataset.from_dict(
        {"sentence": ["Mary left.", "Left Mary the."], "label": [1, 0], "idx": [0, 1]},
        features=datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                                    "label": datasets.ClassLabel(names=["unacceptable", "acceptable"])}))
    stsb = datasets.Dataset.from_dict({"sentence1": ["A man sings.", "A dog runs."],
                                       "sentence2": ["A man is singing.", "A cat sleeps."],
                                       "label": [4.8, -1.0], "idx": [0, 1]})
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return {"cola": cola, "stsb": stsb}[name]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = ExperimentConfig(data_source="hub")
    assert load_examples(get_task("cola"), "train", "en", cfg) == [
        {"text_a": "Mary left.", "label": "1", "id": "train-0"}, {"text_a": "Left Mary the.", "label": "0", "id": "train-1"}]
    assert [ex["label"] for ex in load_examples(get_task("stsb"), "dev", "en", cfg)] == [approx(4.8), None]
    assert calls == [("nyu-mll/glue", "cola", "train"), ("nyu-mll/glue", "stsb", "validation")]


# ------------------------------------------------------------------------------------------ specs

@pytest.mark.parametrize("name", GLUE)
def test_glue_specs_are_english_targets(name):
    spec = get_task(name)
    assert "xtreme" in spec.phases and spec.group == "glue" and spec.languages == ("en",)
    source = get_task(spec.train_task) if spec.train_task else spec
    assert {"train", "dev"} <= set(source.files.splits) and "dev" in spec.files.splits
    assert spec.hub is not None and "test" not in spec.files.splits  # GLUE test labels are hidden


def test_glue_metrics_and_sources():
    metric = {n: get_task(n).metric for n in GLUE}
    assert metric == {"cola": "mcc", "sst2": "accuracy", "mrpc": "acc_and_f1", "stsb": "pearson_spearman",
                      "qqp": "acc_and_f1", "mnli_matched": "accuracy", "mnli_mismatched": "accuracy",
                      "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    assert get_task("qqp").phases == ("intermediate", "xtreme")
    assert get_task("mnli_mismatched").files.splits["dev"].endswith("dev_mismatched.jsonl")
    assert get_task("stsb").family == "regression" and get_task("stsb").hub.name == "stsb"


# ------------------------------------------------------------------------------------------ end to end

# The prediction files are written per family; STS-B needs the "regression" writer in scoring.py.
HAS_REGRESSION_WRITER = "regression" in scoring._WRITERS
METRICS = {"cola": {"mcc", "accuracy"}, "mrpc": {"accuracy", "f1", "acc_and_f1"},
           "qqp": {"accuracy", "f1", "acc_and_f1"}, "stsb": {"pearson", "spearman", "pearson_spearman"}}


def test_smoke_glue_config_writes_a_row_per_task_and_metric(tmp_path, cli):
    tasks = [t for t in GLUE if HAS_REGRESSION_WRITER or t != "stsb"]
    run_dir = tmp_path / "run"
    result = cli("eval-xtreme", SMOKE_GLUE, f"run_dir={run_dir}", f"xtreme.tasks=[{','.join(tasks)}]")
    assert result.exit_code == 0, result.output
    rows = read_rows(run_dir / "results.jsonl")
    for task in tasks:
        got = {r["metric"]: r["value"] for r in rows if r["task"] == task}
        assert set(got) == METRICS.get(task, {"accuracy"}), task
        assert all(-100.0 <= v <= 100.0 for v in got.values())
        assert {(r["language"], r["split"], r["phase"]) for r in rows if r["task"] == task} == {("en", "dev", "xtreme")}
        assert (run_dir / "predictions" / task / "dev-en.tsv").is_file()
    assert {r["train_task"] for r in rows if r["task"].startswith("mnli_")} == {"mnli"}
    assert "cola dev mcc" in result.output


@pytest.mark.skipif(not HAS_REGRESSION_WRITER, reason="needs scoring._WRITERS['regression'] (see the task report)")
def test_smoke_stsb_predictions_are_scores(tmp_path, cli):
    run_dir = tmp_path / "run"
    assert cli("eval-xtreme", SMOKE_GLUE, f"run_dir={run_dir}", "xtreme.tasks=[stsb]").exit_code == 0
    lines = (run_dir / "predictions" / "stsb" / "dev-en.tsv").read_text().split()
    assert len(lines) == 8 and all(float(x) == float(x) for x in lines)
