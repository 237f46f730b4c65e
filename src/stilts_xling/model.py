"""Phase 1: the encoder and tokenizer; `MultiTaskModel` = one shared encoder + one head per task.

Between phases only the encoder travels, in `save_pretrained` format with its tokenizer, so
`AutoModel.from_pretrained(dir)` loads it anywhere (jiant's `--model_load_mode partial`).
"""
from __future__ import annotations

import inspect
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from . import architectures
from .config import ModelConfig
from .files import naming
from .tasks.base import TaskSpec
from .tasks.registry import family_of

log = logging.getLogger(__name__)

TINY_TOKENIZER = Path(__file__).parent / "assets" / "tiny_tokenizer"

# name -> (transformers config class name, extra kwargs). Shapes come from model.tiny_* keys; special
# token ids from the tokenizer.
TINY_ARCHITECTURES: dict[str, tuple[str, dict]] = {
    # XLM-R numbers positions from padding_idx + 1 = 2, hence 512 + 2 positions.
    "xlm-roberta": ("XLMRobertaConfig", {"max_position_embeddings": 514, "type_vocab_size": 1}),
    # BERT and DeBERTa count positions from 0; no token_type_ids in a batch means all zeros.
    "bert": ("BertConfig", {"max_position_embeddings": 512}),
    # mDeBERTa-v3's attention: relative positions only (none added to the input), log buckets, shared keys.
    "deberta-v2": ("DebertaV2Config", {"max_position_embeddings": 512, "type_vocab_size": 0,
                                       "relative_attention": True, "position_buckets": 256,
                                       "pos_att_type": ["p2c", "c2p"], "position_biased_input": False,
                                       "norm_rel_ebd": "layer_norm", "share_att_key": True}),
    # RemBERT decouples a narrow input embedding from the hidden size.
    "rembert": ("RemBertConfig", {"max_position_embeddings": 512, "input_embedding_size": 16,
                                  "output_embedding_size": 16}),
    "gpt2": ("GPT2Config", {"n_positions": 512}),
    "llama": ("LlamaConfig", {"max_position_embeddings": 512}),
    "t5": ("T5Config", {}),
}
# Config classes that name the tiny shapes differently from BERT (GPT2Config's own aliases cover all but
# the feed-forward width; T5Config derives num_decoder_layers from num_layers only when given by that name).
_BERT_SHAPE_NAMES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_SHAPE_NAMES: dict[str, dict[str, str]] = {
    "GPT2Config": {"intermediate_size": "n_inner"},
    "T5Config": {"hidden_size": "d_model", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
                 "intermediate_size": "d_ff", "head_dim": "d_kv"},
}


def tokenizer_source(cfg: ModelConfig) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    return str(TINY_TOKENIZER) if cfg.name.startswith("tiny:") else cfg.name


def load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Decoder-only checkpoints (GPT-2, Llama) ship no pad token. Batches are right-padded and masked,
        # so the pad id is never attended to or pooled; eos is a safe stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_encoder(name: str, cfg: ModelConfig, tokenizer: Any) -> nn.Module:
    """A hub id / local dir (pretrained, or random weights with model.random_init), or tiny:<arch>.

    Encoder-decoders load their encoder side (T5EncoderModel) unless model.seq2seq_side is "decoder".
    The pooling that MultiTaskModel will use (model.pooling, "auto" resolved for this model) is recorded
    as `encoder.stilts_pooling`."""
    import transformers
    from transformers import AutoConfig

    side = getattr(cfg, "seq2seq_side", "encoder")
    tiny = name.startswith("tiny:")
    config = tiny_config(name[len("tiny:"):], cfg, tokenizer) if tiny else AutoConfig.from_pretrained(name)
    saved_side_only = any(a.endswith("EncoderModel") for a in config.architectures or ())
    if side == "decoder" and architectures.is_seq2seq(config) and saved_side_only:
        raise ValueError(f"{name} holds only the encoder side of a {config.model_type} model, but "
                         "model.seq2seq_side is decoder; use seq2seq_side=encoder or the full checkpoint")
    cls = getattr(transformers, architectures.encoder_class_name(config, side))
    if tiny or cfg.random_init:
        encoder = cls._from_config(config, **_model_kwargs(cls))
    else:
        encoder = cls.from_pretrained(name, **_model_kwargs(cls))
    check_vocab(encoder, tokenizer, name)
    encoder.stilts_pooling = architectures.resolve_pooling(encoder, getattr(cfg, "pooling", "auto"))
    return encoder


def tiny_config(arch: str, cfg: ModelConfig, tokenizer: Any) -> Any:
    import transformers

    cls_name, extra = TINY_ARCHITECTURES[arch]
    shapes = {"hidden_size": cfg.tiny_hidden, "num_hidden_layers": cfg.tiny_layers,
              "num_attention_heads": cfg.tiny_heads, "intermediate_size": 4 * cfg.tiny_hidden,
              "head_dim": cfg.tiny_hidden // cfg.tiny_heads}
    names = {**{k: k for k in _BERT_SHAPE_NAMES}, **_SHAPE_NAMES.get(cls_name, {})}
    # GPT-2 and Llama have no pad token of their own and GPT-2 defaults to ids beyond this vocabulary.
    config = getattr(transformers, cls_name)(
        vocab_size=len(tokenizer), **{names[k]: v for k, v in shapes.items() if k in names},
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **extra)
    if architectures.is_seq2seq(config):  # T5 starts decoding from the pad token
        config.decoder_start_token_id = tokenizer.pad_token_id
    return config


def _model_kwargs(cls: type) -> dict:
    # BERT-style encoders add a pooler layer the heads never use (DDP flags its unused parameters).
    return {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}


def check_vocab(encoder: nn.Module, tokenizer: Any, name: str) -> None:
    rows = encoder.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model {name!r} embeds only {rows}: "
                         "they do not belong together; set model.tokenizer to the model's own tokenizer")


def save_encoder(encoder: nn.Module, tokenizer: Any, out_dir: Path, state_dict: Optional[dict] = None) -> None:
    """Write to a temp folder, then rename, so a crash never leaves half an encoder behind. `state_dict`:
    the encoder's full weights when its own parameters are FSDP shards."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with naming(out_dir):
            encoder.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not stay full of half an encoder
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def _make_head(spec: TaskSpec, encoder: nn.Module) -> nn.Module:
    family = family_of(spec)
    # A family whose head shares the encoder's weights (MLM: output projection = input embeddings) gets
    # the encoder itself.
    make = getattr(family, "make_model_head", None)
    return make(spec, encoder) if make else family.make_head(spec, encoder.config.hidden_size)


class MultiTaskModel(nn.Module):
    """A shared encoder and an `nn.ModuleDict` of heads keyed by task name."""

    def __init__(self, encoder: nn.Module, specs: list[TaskSpec], pooling: Optional[str] = None):
        super().__init__()
        self.encoder = encoder
        self.specs = {spec.name: spec for spec in specs}
        self.heads = nn.ModuleDict({s.name: _make_head(s, encoder) for s in specs})
        # `pooling` overrides what load_encoder recorded from model.pooling (architectures.py).
        self.pooling = architectures.resolve_pooling(encoder, pooling or getattr(encoder, "stilts_pooling", "auto"))
        self.runs_decoder = architectures.runs_decoder(encoder)
        # Set by speed.prepare (speed.unpadded): runs the encoder on batches packed by data.collate_packed.
        self.packed_encoder = None

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return architectures.POOLERS[self.pooling](hidden, mask)

    def forward(self, task: str, batch: dict[str, torch.Tensor]):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        # Multiple choice batches are [batch, choices, length]: encode every choice as its own row.
        flat_ids, flat_mask = ids.view(-1, ids.size(-1)), mask.view(-1, mask.size(-1))
        if self.packed_encoder is not None and "cu_seqlens" in batch:
            hidden = self.packed_encoder(batch, flat_mask)
        else:
            hidden = architectures.hidden_states(self.encoder, flat_ids, flat_mask, self.runs_decoder)
        pooled = self.pool(hidden, flat_mask)
        return family_of(self.specs[task]).forward(self.heads[task], hidden, pooled, batch)


# Attention modules that keep their dropout rate as a plain float instead of an nn.Dropout (T5Attention's
# `dropout`, Llama's `attention_dropout`).
_FLOAT_DROPOUT_ATTRS = ("dropout", "attention_dropout")


def set_dropout(model: nn.Module, p: Optional[float]) -> nn.Module:
    """Every dropout rate in the model (encoder and heads) to `p`: each nn.Dropout (transformers' attention
    reads its dropout module's `p` too) and the float rates some attention modules keep. None leaves the
    model as built."""
    if p is None:
        return model
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        for name in _FLOAT_DROPOUT_ATTRS:
            if type(getattr(module, name, None)) is float:
                setattr(module, name, p)
    return model
