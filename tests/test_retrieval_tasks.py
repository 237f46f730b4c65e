"""The retrieval family (tasks/retrieval.py): embeddings, layer choice, Tatoeba and BUCC through the CLI."""
import dataclasses
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import ASSETS, REPO, run_cli, shared_data

from stilts_xling import pipeline, rundir
from stilts_xling.config import ModelConfig, load_config
from stilts_xling.model import TINY_TOKENIZER, load_encoder, load_tokenizer
from stilts_xling.readers import read_bucc, read_tatoeba
from stilts_xling.results import read_rows
from stilts_xling.tasks import retrieval as RT

CONFIG = REPO / "configs" / "smoke" / "retrieval.yaml"
REAL_TATOEBA = ["ar", "de", "el", "es", "fr", "hi", "ja", "ko", "ru", "sw", "th", "tr", "vi", "zh"]


@pytest.fixture(scope="module")
def tiny():
    tok = load_tokenizer(str(TINY_TOKENIZER))
    torch.manual_seed(0)
    return load_encoder("tiny:xlm-roberta", ModelConfig(name="tiny:xlm-roberta"), tok).eval(), tok


def tatoeba_overrides() -> list[str]:
    """The 14 real LASER pairs when ../shared/data has them, else the two bundled fixture pairs."""
    real = shared_data() / "tatoeba"
    if (real / "tatoeba.deu-eng.deu").is_file():
        return [f"xtreme.task_options.tatoeba.data_dir={real}"]
    return [f"xtreme.task_options.tatoeba.data_dir={ASSETS / 'tatoeba'}", "xtreme.languages.tatoeba=[de,zh]"]


def rows_of(run_dir, task, **match):
    return [r for r in read_rows(run_dir / "results.jsonl")
            if r["task"] == task and all(r.get(k) == v for k, v in match.items())]


def with_retrieval(cfg, **settings):
    """Set retrieval settings whether or not ExperimentConfig has its `retrieval` section yet."""
    current = getattr(cfg, "retrieval", None)
    cfg.retrieval = (dataclasses.replace(current, **settings) if dataclasses.is_dataclass(current)
                     else SimpleNamespace(**settings))
    return cfg


# ---------------------------------------------------------------------------------------------------
# Layer choice and pooling


def test_resolve_layer():
    assert RT.resolve_layer(24) == 14  # the paper's layer 14 of 24
    assert RT.resolve_layer(12) == 7  # 14/24 * 12 = 7
    assert RT.resolve_layer(2) == 1  # 1.17 -> 1
    assert RT.resolve_layer(24, fraction=0.5) == 12
    assert RT.resolve_layer(6, fraction=0.75) == 5  # 4.5 rounds half up
    assert RT.resolve_layer(24, fraction=1.0) == 24 and RT.resolve_layer(24, fraction=0.0) == 0
    assert RT.resolve_layer(24, layer=0) == 0  # embeddings
    assert RT.resolve_layer(24, layer=-1) == 24 and RT.resolve_layer(24, layer=20, fraction=0.1) == 20
    with pytest.raises(ValueError, match="outside 0..2"):
        RT.resolve_layer(2, layer=14)
    with pytest.raises(ValueError, match="layer_fraction"):
        RT.resolve_layer(2, fraction=1.5)


def test_settings_defaults_and_overrides():
    assert RT.settings(SimpleNamespace()) == RT.DEFAULTS
    st = RT.settings(SimpleNamespace(retrieval=SimpleNamespace(pooling="cls", k=8)))
    assert st["pooling"] == "cls" and st["k"] == 8 and st["protocol"] == "margin" and st["max_length"] == 512
    with pytest.raises(ValueError, match="retrieval.protocol"):
        RT.settings(SimpleNamespace(retrieval=SimpleNamespace(protocol="faiss")))


def test_layer_zero_is_the_embedding_output(tiny):
    enc, tok = tiny
    ids = tok("Der Hund schläft.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = enc.embeddings(input_ids=ids)[0].mean(0)
    got = RT.embed(enc, tok, ["Der Hund schläft."], [0])[0][0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_mean_pooling_excludes_padding(tiny):
    enc, tok = tiny
    sents = ["Hi.", "A much longer sentence, with many more tokens than the first one has."]
    got = RT.embed(enc, tok, sents, [1, 2], batch_size=8)  # one batch: the short one is padded
    for k in (1, 2):
        for row, s in enumerate(sents):
            with torch.no_grad():  # each sentence alone: no padding at all
                hidden = enc(**tok(s, return_tensors="pt"), output_hidden_states=True).hidden_states[k][0]
            torch.testing.assert_close(got[k][row], hidden.mean(0), atol=1e-5, rtol=1e-4)
            if row == 0:
                cls = RT.embed(enc, tok, sents, [k], pooling="cls", batch_size=8)[k][0]
                torch.testing.assert_close(cls, hidden[0], atol=1e-5, rtol=1e-4)
    # Averaging the pad positions too would give something else: the test can tell them apart.
    batch = tok(sents, padding=True, return_tensors="pt")
    with torch.no_grad():
        padded = enc(**batch, output_hidden_states=True).hidden_states[1][0].mean(0)
    assert not torch.allclose(padded, got[1][0], atol=1e-3)


def test_margin_pairs_give_every_duplicate_id_the_pair():
    # Unique rows: src "x" (ids a1, a2), "y" (b); trg t1, t2. es = et = identity, k = 4 -> 2 neighbours:
    # cos(x, t1) = 1, fwd_mean = bwd_mean = (1 + 0) / 2 = .5, ratio margin = 1 / .5 = 2.
    s_ids, s_text, s_rows = RT._unify({"a1": "x", "a2": "x", "b": "y"})
    assert s_text == ["x", "y"] and s_rows == [0, 0, 1]
    eye = torch.eye(2)
    pairs = RT._margin_pairs(s_ids, s_rows, ["t1", "t2"], [0, 1], eye, eye, 4)
    assert sorted(pairs) == [("a1", "t1", 2.0), ("a2", "t1", 2.0), ("b", "t2", 2.0)]


# ---------------------------------------------------------------------------------------------------
# A "perfect" encoder: a sentence and its translation share a one-hot vector (+ 0.01 everywhere, so no
# cosine is exactly 0); every other sentence has its own. cos = 1 for translations, ~0.07 otherwise.


def perfect_embed(bucc_dir, tatoeba_dir):
    index: dict[str, int] = {}
    for lang3 in ("deu", "cmn"):
        for xx, en in zip(*read_tatoeba(tatoeba_dir, lang3)):
            index[xx] = index.setdefault(en, len(index))
    for lang in ("de", "zh"):
        for split in ("dev", "test"):
            src, trg, gold = read_bucc(bucc_dir, lang, split)
            for s, t in gold:
                index[src[s]] = index.setdefault(trg[t], len(index))

    def embed(encoder, tokenizer, sentences, layers, *args, **kwargs):
        rows = torch.full((len(sentences), 512), 0.01)
        for i, s in enumerate(sentences):
            rows[i, index.setdefault(s, len(index))] += 1
        return {k: rows for k in layers}

    return embed


@pytest.fixture
def bucc_with_test_gold(tmp_path):
    """The bundled fixture plus test gold (xtreme deletes it; here it is known), so test is scored."""
    folder = tmp_path / "bucc2018"
    shutil.copytree(ASSETS / "bucc2018", folder)
    (folder / "de-en.test.gold").write_text(
        "de-000001\ten-000010\nde-000002\ten-000003\nde-000003\ten-000005\nde-000004\ten-000008\n")
    (folder / "zh-en.test.gold").write_text(
        "zh-000001\ten-000006\nzh-000007\ten-000012\nzh-000008\ten-000002\nzh-000010\ten-000007\n")
    return folder


def run_retrieval(run_dir, *overrides, **settings):
    cfg = load_config(CONFIG, [f"run_dir={run_dir}", f"data_dir={ASSETS}", *overrides])
    if settings:
        with_retrieval(cfg, **settings)
    pipeline.eval_xtreme(rundir.start(cfg))
    return run_dir


def test_perfect_encoder_scores_100(tmp_path, monkeypatch, bucc_with_test_gold):
    monkeypatch.setattr(RT, "embed", perfect_embed(bucc_with_test_gold, ASSETS / "tatoeba"))
    run_dir = run_retrieval(tmp_path / "run", f"xtreme.task_options.bucc2018.data_dir={bucc_with_test_gold}",
                            f"xtreme.task_options.tatoeba.data_dir={ASSETS / 'tatoeba'}",
                            "xtreme.languages.tatoeba=[de,zh]")
    tatoeba = rows_of(run_dir, "tatoeba")
    assert len(tatoeba) == 2 * 2 * 3  # de, zh x dev, test x accuracy, _reverse, _mean
    assert all(r["value"] == 100.0 and r["protocol"] == "cosine" for r in tatoeba)
    for split in ("dev", "test"):
        f1 = rows_of(run_dir, "bucc2018", split=split, metric="f1")
        assert {r["language"]: r["value"] for r in f1} == {"de": 100.0, "zh": 100.0}
        assert all(r["protocol"] == "margin" and r["k"] == 4 for r in f1)
    # The test rows carry the dev threshold they were scored with.
    thr = {(r["language"], r["split"]): r["value"] for r in rows_of(run_dir, "bucc2018", metric="threshold")}
    assert thr[("de", "dev")] == thr[("de", "test")] > 1  # gold ratio ~3.4, best distractor <= 1
    # Tatoeba's test split writes the submission file: the predicted xx line of each English line, the lines in
    # xtreme's order (English sorted by text: "I am hungry." is line 0, "I like green tea." line 9, ...), as its
    # hidden labels are. The perfect encoder predicts each line's own index.
    expected = [0, 9, 5, 6, 7, 3, 8, 2, 4, 1]
    assert (run_dir / "predictions" / "tatoeba" / "test-de.tsv").read_text() == "".join(f"{i}\n" for i in expected)


def test_cosine_protocol_keeps_every_nearest_neighbour(tmp_path, monkeypatch, bucc_with_test_gold):
    monkeypatch.setattr(RT, "embed", perfect_embed(bucc_with_test_gold, ASSETS / "tatoeba"))
    run_dir = run_retrieval(tmp_path / "run", "xtreme.tasks=[bucc2018]", "xtreme.languages={bucc2018: [de]}",
                            f"xtreme.task_options={{bucc2018: {{data_dir: '{bucc_with_test_gold}'}}}}",
                            protocol="cosine")
    got = {(r["split"], r["metric"]): r["value"] for r in rows_of(run_dir, "bucc2018")}
    # dev: 12 German sentences, each paired with its nearest English one; the 5 gold pairs are right.
    # P = 5/12, R = 5/5, F1 = 2PR/(P+R) = 10/17. test: 9 sentences, 4 gold: P = 4/9, F1 = 8/13.
    assert got[("dev", "precision")] == pytest.approx(500 / 12) and got[("dev", "recall")] == 100.0
    assert got[("dev", "f1")] == pytest.approx(1000 / 17)
    assert got[("test", "f1")] == pytest.approx(800 / 13)
    assert ("dev", "threshold") not in got
    assert {r["protocol"] for r in rows_of(run_dir, "bucc2018")} == {"cosine"}


# ---------------------------------------------------------------------------------------------------
# The real CLI on the tiny random model


def test_smoke_config_writes_tatoeba_and_bucc_rows(tmp_path):
    run_dir = tmp_path / "run"
    args = ["eval-xtreme", CONFIG, f"run_dir={run_dir}", f"data_dir={ASSETS}", *tatoeba_overrides()]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    langs = REAL_TATOEBA if len(tatoeba_overrides()) == 1 else ["de", "zh"]
    tatoeba = rows_of(run_dir, "tatoeba")
    assert {(r["language"], r["split"], r["metric"]) for r in tatoeba} == {
        (lang, split, m) for lang in langs for split in ("dev", "test")
        for m in ("accuracy", "accuracy_reverse", "accuracy_mean")}
    assert all(0 <= r["value"] <= 100 and r["layer"] == 1 and r["pooling"] == "mean" for r in tatoeba)
    dev = {(r["language"], r["metric"]) for r in rows_of(run_dir, "bucc2018", split="dev")}
    assert dev == {(lang, m) for lang in ("de", "zh") for m in ("precision", "recall", "f1", "threshold")}
    # No test gold in the fixture (as in xtreme): the mined pairs go to the submission file instead.
    test = {r["metric"] for r in rows_of(run_dir, "bucc2018", split="test")}
    assert test == {"predicted_pairs", "threshold"}
    lines = (run_dir / "predictions" / "bucc2018" / "test-de.tsv").read_text().splitlines()
    assert all(a.startswith("de-") and b.startswith("en-") for a, b in (line.split("\t") for line in lines))
    assert "tatoeba dev accuracy" in result.output and "bucc2018 dev f1" in result.output
    before = (run_dir / "results.jsonl").read_text()
    assert run_cli(*args).exit_code == 0  # a rerun finds every result and adds nothing
    assert (run_dir / "results.jsonl").read_text() == before


def test_layer_sweep_rows(tmp_path):
    run_dir = run_retrieval(tmp_path / "run", f"xtreme.task_options.tatoeba.data_dir={ASSETS / 'tatoeba'}",
                            "xtreme.languages={tatoeba: [de], bucc2018: [de]}", "xtreme.splits=[dev]",
                            layer_sweep=True)
    rows = {r["metric"]: r for r in rows_of(run_dir, "tatoeba", language="de")}
    sweep = {m for m in rows if m.startswith("layer")}
    assert sweep == {f"layer{k:02d}/acc@{n}" for k in range(3) for n in (1, 5, 10)}  # 2 layers + embeddings
    assert all(rows[f"layer{k:02d}/acc@1"]["layer"] == k for k in range(3))
    assert rows["layer01/acc@1"]["value"] == pytest.approx(rows["accuracy"]["value"])  # layer 1 is the default
    for k in range(3):
        a1, a5, a10 = (rows[f"layer{k:02d}/acc@{n}"]["value"] for n in (1, 5, 10))
        assert a1 <= a5 <= a10 == 100.0  # 10 sentences: the gold one is always among the 10 nearest
    bucc = {r["metric"] for r in rows_of(run_dir, "bucc2018", language="de")}
    assert {f"layer{k:02d}/recall@{n}" for k in range(3) for n in (1, 5, 10)} <= bucc
