"""Continued multilingual MLM as an intermediate task (tasks/mlm.py): masking statistics and seeding, the
text fixtures in several languages, the pretrained-head reuse, scoring, and MNLI + MLM through the CLI."""
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO
from stilts_xling import translated
from stilts_xling.config import ConfigError, ExperimentConfig, ModelConfig, load_config
from stilts_xling.data import collate
from stilts_xling.evaluate import evaluate
from stilts_xling.model import TINY_TOKENIZER, MultiTaskModel, load_encoder, load_tokenizer, save_encoder, tiny_config
from stilts_xling.readers import READERS
from stilts_xling.results import read_rows
from stilts_xling.tasks.mlm import FAMILY, MLM_LANGUAGES, mask_tokens
from stilts_xling.tasks.registry import get_task

ASSETS = Path(__file__).resolve().parent / "assets"
CFG = ExperimentConfig(data_dir=str(ASSETS))
MLM = get_task("mlm")
SMOKE_MLM = REPO / "configs" / "smoke" / "mlm.yaml"
SPECIAL = (0, 1, 2, 3, 4)  # <s> <pad> </s> <unk> <mask> of the bundled tokenizer
MASK = 4


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(TINY_TOKENIZER))


def synthetic(rows: int = 4000, width: int = 64, vocab: int = 1000, seed: int = 0):
    """Ragged rows `<s> w w ... </s>` of ordinary ids, right-padded with <pad>: (ids, maskable, padding)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, width + 1, (rows,), generator=g)
    ids = torch.randint(len(SPECIAL), vocab, (rows, width), generator=g)
    positions = torch.arange(width)[None, :]
    ids[:, 0] = 0
    ids[positions == (lengths - 1)[:, None]] = 2
    padding = positions >= lengths[:, None]
    ids[padding] = 1
    maskable = ~padding & ~torch.isin(ids, torch.tensor(SPECIAL))
    return ids, maskable, padding


def test_masking_statistics_follow_bert():
    ids, maskable, padding = synthetic()
    ordinary = torch.arange(len(SPECIAL), 1000)
    inputs, labels = mask_tokens(ids, maskable, MASK, ordinary, torch.Generator().manual_seed(7))
    selected = labels != -100
    assert not selected[~maskable].any()  # never a special token or padding
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing else changes
    rate = selected.sum() / maskable.sum()
    assert abs(rate - 0.15) < 0.005
    to_mask = (inputs == MASK) & selected
    to_random = (inputs != ids) & ~to_mask & selected
    kept = (inputs == ids) & selected
    n = selected.sum()
    assert abs(to_mask.sum() / n - 0.8) < 0.01
    assert abs(to_random.sum() / n - 0.1) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.01
    assert not torch.isin(inputs[to_random], torch.tensor(SPECIAL)).any()  # random tokens are ordinary
    assert (inputs[padding] == 1).all() and (inputs[:, 0] == 0).all()


def test_every_row_gets_a_masked_token():
    ids, maskable, _ = synthetic(rows=500, width=8)
    _, labels = mask_tokens(ids, maskable, MASK, torch.arange(5, 1000), torch.Generator().manual_seed(0))
    assert (labels != -100).any(dim=1).all()


def test_masks_are_seeded():
    ids, maskable, _ = synthetic(rows=200)
    ordinary = torch.arange(5, 1000)
    first = mask_tokens(ids, maskable, MASK, ordinary, torch.Generator().manual_seed(3))
    again = mask_tokens(ids, maskable, MASK, ordinary, torch.Generator().manual_seed(3))
    other = mask_tokens(ids, maskable, MASK, ordinary, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])


def test_reader_skips_blank_lines():
    records = READERS["text_lines"](ASSETS / "mlm" / "en.txt")
    assert len(records) == 30 and records[0] == {
        "id": "1", "text": "The river runs past the old mill and under the stone bridge."}
    assert records[10]["id"] == "12"  # line 11 is blank


def test_languages_are_concatenated_from_the_option():
    options = SimpleNamespace(languages=["en", "de", "zh"], data_dir=None)
    examples = translated.train_examples(MLM, CFG, options)
    assert len(examples) == 90 and [examples[i]["id"] for i in (0, 30, 60)] == ["en-1", "de-1", "zh-1"]
    assert examples[60]["text"] == "河水流过老磨坊，从石桥下穿过。"
    # Default: every XTREME language, each a file that the fixtures mostly lack.
    assert translated.languages(MLM, None) == MLM_LANGUAGES and len(MLM_LANGUAGES) == 40
    from stilts_xling.config import ExperimentConfig, IntermediateConfig, TaskOptions
    from stilts_xling.pipeline import check_data

    def problems(languages):
        cfg = ExperimentConfig(data_dir=str(ASSETS), intermediate=IntermediateConfig(
            tasks=["mlm"], task_options={"mlm": TaskOptions(languages=languages)}))
        return check_data(cfg, ("intermediate",))

    train = [p for p in problems(None) if p.startswith("mlm train")]
    assert len(train) == 37 and train[0].startswith("mlm train [af]: expected ")
    # A run checks the chosen languages' dev files too, before training starts.
    assert [p.split(":")[0] for p in problems(["en", "de", "ko"])] == ["mlm train [ko]", "mlm dev [ko]"]


def test_config_checks_mlm_languages(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE_MLM.read_text().replace("languages: [en, de, zh]", "languages: [en, xx]"))
    with pytest.raises(ConfigError, match="intermediate.task_options.mlm.languages: 'xx' has no mlm data"):
        load_config(bad)
    assert load_config(SMOKE_MLM).intermediate.task_options["mlm"].languages == ["en", "de", "zh"]


def test_featurize_windows_long_lines_and_masks_reproducibly(tok):
    examples = translated.train_examples(MLM, CFG, SimpleNamespace(languages=["en", "zh"], data_dir=None))
    features = FAMILY.featurize(MLM, examples, tok, 16)
    assert len(features) > len(examples)  # lines longer than 16 tokens become several windows
    assert {f["example_index"] for f in features} == set(range(len(examples)))
    for f in features:
        assert len(f["input_ids"]) == len(f["labels"]) <= 16
        assert f["input_ids"][0] == 0 and f["labels"][0] == -100 and f["labels"][-1] == -100
        assert any(label != -100 for label in f["labels"])
    assert FAMILY.featurize(MLM, examples, tok, 16) == features


def test_forward_scores_masked_tokens_and_evaluate_reports_perplexity(tok):
    encoder = load_encoder("tiny:xlm-roberta", ModelConfig(name="tiny:xlm-roberta"), tok)
    model = MultiTaskModel(encoder, [MLM]).eval()
    examples = READERS["text_lines"](ASSETS / "mlm" / "de.dev.txt")
    features = FAMILY.featurize(MLM, examples, tok, 32)
    batch = collate(features, tok.pad_token_id)
    loss, out = model("mlm", batch)
    picked = batch["labels"] != -100
    assert out.shape == (*batch["labels"].shape, 2) and (out[~picked] == 0).all()
    assert torch.isclose(loss, -out[picked][:, 0].mean(), atol=1e-5)  # the loss is the masked tokens' NLL
    metrics, predictions = evaluate(model, MLM, examples, features, "de", 4, torch.device("cpu"), tok.pad_token_id)
    assert set(predictions) == {ex["id"] for ex in examples}
    assert sum(p["masked"] for p in predictions.values()) == int(picked.sum())
    assert 0 <= metrics["accuracy"] <= 100
    assert math.isclose(metrics["perplexity"], math.exp(loss.item()), rel_tol=1e-4)


def _is_tied(head, encoder) -> bool:
    return any(p is encoder.get_input_embeddings().weight for p in head.parameters())


@pytest.mark.parametrize("arch,masked_lm", [("xlm-roberta", "XLMRobertaForMaskedLM"), ("bert", "BertForMaskedLM"),
                                             ("deberta-v2", "DebertaV2ForMaskedLM")])
def test_pretrained_mlm_head_is_reused_and_tied(arch, masked_lm, tok, tmp_path):
    import transformers

    torch.manual_seed(0)
    checkpoint = getattr(transformers, masked_lm)(tiny_config(arch, ModelConfig(), tok)).eval()
    checkpoint.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    encoder = load_encoder(str(tmp_path), ModelConfig(name=str(tmp_path)), tok)
    model = MultiTaskModel(encoder, [MLM]).eval()
    head = model.heads["mlm"]
    assert not isinstance(head, torch.nn.Sequential) and _is_tied(head, encoder)
    ids = torch.tensor([tok("Der Fluss fließt an der alten Mühle vorbei.")["input_ids"]])
    with torch.no_grad():
        want = checkpoint(input_ids=ids).logits
        got = head(encoder(input_ids=ids).last_hidden_state)
    assert torch.allclose(got, want, atol=1e-5)  # the checkpoint's own predictions, weights and all
    # Random weights of that architecture do not match its head: a fresh one then.
    random_encoder = load_encoder(str(tmp_path), ModelConfig(name=str(tmp_path), random_init=True), tok)
    fresh = MultiTaskModel(random_encoder, [MLM]).heads["mlm"]
    assert isinstance(fresh, torch.nn.Sequential) and _is_tied(fresh, random_encoder)


def test_fresh_head_for_encoders_without_one(tok, tmp_path):
    encoder = load_encoder("tiny:rembert", ModelConfig(name="tiny:rembert"), tok)  # embeddings narrower than hidden
    head = MultiTaskModel(encoder, [MLM]).heads["mlm"]
    assert isinstance(head, torch.nn.Sequential) and _is_tied(head, encoder)
    assert head(torch.zeros(3, encoder.config.hidden_size)).shape == (3, encoder.get_input_embeddings().num_embeddings)
    save_encoder(encoder, tok, tmp_path / "encoder")  # a saved encoder has no MLM weights
    again = load_encoder(str(tmp_path / "encoder"), ModelConfig(name=str(tmp_path / "encoder")), tok)
    assert isinstance(MultiTaskModel(again, [MLM]).heads["mlm"], torch.nn.Sequential)


def test_mnli_with_mlm_end_to_end(tmp_path, cli):
    run_dir = tmp_path / "run"
    result = cli("run", SMOKE_MLM, f"run_dir={run_dir}")
    assert result.exit_code == 0, result.output
    rows = read_rows(run_dir / "results.jsonl")
    dev = {(r["task"], r["language"], r["metric"]): r["value"] for r in rows if r["phase"] == "intermediate"}
    # MLM is scored on every chosen language's held-out text; MNLI on its English dev set only.
    assert set(dev) == {("mnli", "en", "accuracy")} | {("mlm", lang, m) for lang in ("en", "de", "zh")
                                                        for m in ("accuracy", "perplexity")}
    for lang in ("en", "de", "zh"):
        assert 0 <= dev[("mlm", lang, "accuracy")] <= 100 and 1 < dev[("mlm", lang, "perplexity")] < 2 * 1502
    assert dev[("mlm", "de", "perplexity")] != dev[("mlm", "zh", "perplexity")]
    assert {r["language"] for r in rows if r["task"] == "xnli"} == {"en", "de", "zh"}
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(run_dir / "intermediate" / "encoder")
    assert not any("lm_head" in k or k.startswith("heads") for k in encoder.state_dict())  # the encoder alone
    history = (run_dir / "intermediate" / "history.json").read_text()
    assert '"loss/mlm"' in history and '"loss/mnli"' in history  # both tasks were trained
