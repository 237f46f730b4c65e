"""Other architectures behind the same heads: tiny random BERT, DeBERTa-v2, RemBERT, GPT-2, Llama and T5
(architectures.py, model.py): classification, span-QA and tagging heads, pooling, save/load round trips,
and the smoke pipeline through the real CLI on BERT and GPT-2."""
from pathlib import Path

import pytest
import torch

from conftest import SMOKE
from stilts_xling.config import ExperimentConfig, ModelConfig
from stilts_xling.data import collate, load_examples
from stilts_xling.model import (TINY_ARCHITECTURES, TINY_TOKENIZER, MultiTaskModel, load_encoder, load_tokenizer,
                                save_encoder)
from stilts_xling.results import read_rows
from stilts_xling.tasks.registry import family_of, get_task

ASSETS = Path(__file__).resolve().parent / "assets"
CFG = ExperimentConfig(data_dir=str(ASSETS))
AUTO_POOLING = {"xlm-roberta": "first", "bert": "first", "deberta-v2": "first", "rembert": "first",
                "gpt2": "last", "llama": "last", "t5": "mean"}
ENCODER_CLASS = {"xlm-roberta": "XLMRobertaModel", "bert": "BertModel", "deberta-v2": "DebertaV2Model",
                 "rembert": "RemBertModel", "gpt2": "GPT2Model", "llama": "LlamaModel", "t5": "T5EncoderModel"}
# classification, span QA, tagging: every head family that trains on hidden or pooled states.
TASKS = {"mnli": "train", "squad_v1": "train", "panx": "train"}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(TINY_TOKENIZER))


@pytest.fixture(scope="module")
def batches(tok):
    out = {}
    for name, split in TASKS.items():
        spec = get_task(name)
        examples = load_examples(spec, split, "en", CFG)[:6]
        out[name] = collate(family_of(spec).featurize(spec, examples, tok, 64), tok.pad_token_id)
    return out


def tiny(arch: str, tok, **options):
    cfg = ModelConfig(name=f"tiny:{arch}")
    for key, value in options.items():  # model.pooling / model.seq2seq_side before config.py has them
        setattr(cfg, key, value)
    torch.manual_seed(0)
    return load_encoder(cfg.name, cfg, tok), cfg


def test_every_architecture_is_covered():
    assert set(TINY_ARCHITECTURES) == set(AUTO_POOLING)


@pytest.mark.parametrize("arch", sorted(AUTO_POOLING))
def test_heads_train_on_every_architecture(arch, tok, batches):
    encoder, _ = tiny(arch, tok)
    assert type(encoder).__name__ == ENCODER_CLASS[arch]
    model = MultiTaskModel(encoder, [get_task(name) for name in TASKS])
    assert model.pooling == AUTO_POOLING[arch]
    for name, batch in batches.items():
        loss, logits = model(name, batch)
        assert torch.isfinite(loss), (arch, name)
        loss.backward()
        assert logits.shape[0] == batch["input_ids"].shape[0]
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("arch", sorted(AUTO_POOLING))
def test_save_and_load_round_trip(arch, tok, batches, tmp_path):
    encoder, cfg = tiny(arch, tok)
    save_encoder(encoder, tok, tmp_path / "encoder")
    loaded = load_encoder(str(tmp_path / "encoder"), cfg, tok)
    assert type(loaded) is type(encoder) and loaded.stilts_pooling == AUTO_POOLING[arch]
    ids, mask = batches["mnli"]["input_ids"], batches["mnli"]["attention_mask"]
    with torch.no_grad():
        want = encoder.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.allclose(loaded.eval()(input_ids=ids, attention_mask=mask).last_hidden_state, want, atol=1e-5)
    if arch != "t5":  # a saved T5 encoder is T5EncoderModel, which AutoModel does not pick
        from transformers import AutoModel

        plain = AutoModel.from_pretrained(tmp_path / "encoder").eval()
        with torch.no_grad():
            assert torch.allclose(plain(input_ids=ids, attention_mask=mask).last_hidden_state, want, atol=1e-5)


def _ragged(tok):
    texts = ["The farmer opened the garden in the kitchen.", "Short one.", "A third, middling sentence here."]
    return [tok(t)["input_ids"] for t in texts]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_only_pools_the_last_real_token_under_right_padding(arch, tok):
    encoder, _ = tiny(arch, tok)
    model = MultiTaskModel(encoder, [get_task("mnli")]).eval()
    rows = _ragged(tok)
    batch = collate([{"input_ids": r} for r in rows], tok.pad_token_id)
    assert batch["input_ids"][1, len(rows[1]):].eq(tok.pad_token_id).all()  # right padding
    with torch.no_grad():
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        pooled = model.pool(hidden, batch["attention_mask"])
        for i, row in enumerate(rows):
            alone = encoder(input_ids=torch.tensor([row])).last_hidden_state[0, -1]
            assert torch.allclose(pooled[i], alone, atol=1e-5), i  # causal: padding after it changes nothing


def test_mean_pooling_excludes_padding(tok):
    encoder, _ = tiny("bert", tok, pooling="mean")
    model = MultiTaskModel(encoder, [get_task("mnli")]).eval()
    assert model.pooling == "mean"
    rows = _ragged(tok)
    batch = collate([{"input_ids": r} for r in rows], tok.pad_token_id)
    with torch.no_grad():
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        pooled = model.pool(hidden, batch["attention_mask"])
        for i, row in enumerate(rows):
            alone = encoder(input_ids=torch.tensor([row])).last_hidden_state[0].mean(dim=0)
            assert torch.allclose(pooled[i], alone, atol=1e-5), i


def test_pooling_option_overrides_and_rejects_unknown_modes(tok):
    encoder, _ = tiny("gpt2", tok, pooling="first")
    assert MultiTaskModel(encoder, [get_task("mnli")]).pooling == "first"
    assert MultiTaskModel(encoder, [get_task("mnli")], pooling="mean").pooling == "mean"
    with pytest.raises(ValueError, match="model.pooling: 'cls' is not one of auto, first, last, mean"):
        tiny("bert", tok, pooling="cls")


def test_t5_decoder_side_pools_the_decoder_and_round_trips(tok, batches, tmp_path):
    encoder, cfg = tiny("t5", tok, seq2seq_side="decoder")
    assert type(encoder).__name__ == "T5Model"
    model = MultiTaskModel(encoder, [get_task("mnli"), get_task("squad_v1")])
    assert model.pooling == "last" and model.runs_decoder
    for name in ("mnli", "squad_v1"):
        loss, _ = model(name, batches[name])
        assert torch.isfinite(loss)
    save_encoder(encoder, tok, tmp_path / "full")
    assert type(load_encoder(str(tmp_path / "full"), cfg, tok)).__name__ == "T5Model"
    # An encoder-side save has no decoder weights to pool.
    encoder_only, encoder_cfg = tiny("t5", tok)
    save_encoder(encoder_only, tok, tmp_path / "side")
    with pytest.raises(ValueError, match="holds only the encoder side"):
        load_encoder(str(tmp_path / "side"), cfg, tok)


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    raw.pad_token = None
    raw.save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert tok.pad_token == tok.eos_token == "</s>"


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_smoke_pipeline_runs_on_other_architectures(arch, tmp_path, cli):
    run_dir = tmp_path / "run"
    result = cli("run", SMOKE, f"run_dir={run_dir}", f"model.name=tiny:{arch}", "intermediate.train.max_steps=4",
                 "xtreme.train.max_steps=4", "xtreme.languages={xnli: [en, de]}", "xtreme.splits=[dev]")
    assert result.exit_code == 0, result.output
    rows = read_rows(run_dir / "results.jsonl")
    assert {(r["phase"], r["task"], r["language"]) for r in rows if r["metric"] == "accuracy"} == {
        ("intermediate", "mnli", "en"), ("xtreme", "xnli", "en"), ("xtreme", "xnli", "de")}
    assert all(r["model"] == f"tiny:{arch}" for r in rows)
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(run_dir / "intermediate" / "encoder")).__name__ == ENCODER_CLASS[arch]


def test_retrieval_embeds_t5_decoder_layers_when_the_decoder_side_is_chosen(tok):
    from stilts_xling import architectures
    from stilts_xling.tasks.retrieval import embed, resolve_layer

    sentences = ["a short one", "ein etwas längerer Satz hier", "这是一个句子"]
    encoder, _ = tiny("t5", tok, seq2seq_side="decoder")
    encoder.config.num_decoder_layers = encoder.config.num_layers + 1  # a decoder deeper than its encoder
    decoder_side = type(encoder)(encoder.config).eval()
    assert architectures.depth(decoder_side) == encoder.config.num_layers + 1
    top = resolve_layer(architectures.depth(decoder_side), -1)
    got = embed(decoder_side, tok, sentences, [0, top], pooling="mean", batch_size=2)
    # The same vectors by hand: the decoder's last hidden layer, fed the input shifted right.
    ids = tok(sentences[1:2])["input_ids"]
    batch = collate([{"input_ids": ids[0]}], tok.pad_token_id)
    with torch.no_grad():
        states = architectures.layer_states(decoder_side, batch["input_ids"], batch["attention_mask"])
    assert len(states) == architectures.depth(decoder_side) + 1
    want = states[top].mean(dim=1)[0]
    torch.testing.assert_close(got[top][1], want, rtol=1e-5, atol=1e-6)
    # Encoder side: the encoder's own stack, as before.
    encoder_side, _ = tiny("t5", tok)
    assert architectures.depth(encoder_side) == encoder_side.config.num_layers
    assert embed(encoder_side, tok, sentences, [1])[1].shape == (3, encoder_side.config.d_model)


@pytest.mark.parametrize("arch", ["t5", "llama", "xlm-roberta"])
def test_model_dropout_zero_reaches_float_attention_dropout(arch, tok, batches):
    from stilts_xling.model import set_dropout

    encoder, _ = tiny(arch, tok)
    for module in encoder.modules():  # make every float rate non-zero, so that a missed one shows
        for name in ("dropout", "attention_dropout"):
            if type(getattr(module, name, None)) is float:
                setattr(module, name, 0.5)
    model = set_dropout(MultiTaskModel(encoder, [get_task("mnli")]), 0.0).train()
    rates = [getattr(m, name) for m in model.modules() for name in ("dropout", "attention_dropout")
             if type(getattr(m, name, None)) is float]
    assert all(r == 0.0 for r in rates) and all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    first, _ = model("mnli", batches["mnli"])
    again, _ = model("mnli", batches["mnli"])
    assert torch.equal(first, again)  # training mode, yet deterministic: no dropout anywhere
