"""Phase 1: the encoder and tokenizer; `MultiTaskModel` = one shared encoder + one head per task.

Between phases only the encoder travels, in `save_pretrained` format with its tokenizer, so
`AutoModel.from_pretrained(dir)` loads it anywhere (jiant's `--model_load_mode partial`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .tasks.base import TaskSpec
from .tasks.registry import family_of

log = logging.getLogger(__name__)

TINY_TOKENIZER = Path(__file__).parent / "assets" / "tiny_tokenizer"

# name -> (transformers config class name, extra kwargs). Shapes come from model.tiny_* keys.
TINY_ARCHITECTURES: dict[str, tuple[str, dict]] = {
    # XLM-R numbers positions from padding_idx + 1 = 2, hence 512 + 2 positions.
    "xlm-roberta": ("XLMRobertaConfig", {"max_position_embeddings": 514, "type_vocab_size": 1}),
    "bert": ("BertConfig", {"max_position_embeddings": 512}),
}

# Decoder-only models see the whole sequence only at the last real token; encoders pool the first.
_LAST_TOKEN_POOLING = {"gpt2", "llama", "mistral", "qwen2", "gemma", "gemma2", "gpt_neox", "bloom", "opt"}
# Encoders whose AutoModel adds an unused pooler layer unless told not to (DDP flags unused params).
_NO_POOLER = {"bert", "roberta", "xlm-roberta", "camembert"}


def tokenizer_source(cfg: ModelConfig) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    return str(TINY_TOKENIZER) if cfg.name.startswith("tiny:") else cfg.name


def load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def load_encoder(name: str, cfg: ModelConfig, tokenizer: Any) -> nn.Module:
    """A hub id / local dir (pretrained, or random weights with model.random_init), or tiny:<arch>."""
    import transformers
    from transformers import AutoConfig, AutoModel

    if name.startswith("tiny:"):
        cls_name, extra = TINY_ARCHITECTURES[name[len("tiny:"):]]
        config = getattr(transformers, cls_name)(
            vocab_size=len(tokenizer), hidden_size=cfg.tiny_hidden, num_hidden_layers=cfg.tiny_layers,
            num_attention_heads=cfg.tiny_heads, intermediate_size=4 * cfg.tiny_hidden,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, **extra)
        encoder = AutoModel.from_config(config, **_model_kwargs(config))
    elif cfg.random_init:
        config = AutoConfig.from_pretrained(name)
        encoder = AutoModel.from_config(config, **_model_kwargs(config))
    else:
        config = AutoConfig.from_pretrained(name)
        encoder = AutoModel.from_pretrained(name, **_model_kwargs(config))
    check_vocab(encoder, tokenizer, name)
    return encoder


def _model_kwargs(config: Any) -> dict:
    return {"add_pooling_layer": False} if config.model_type in _NO_POOLER else {}


def check_vocab(encoder: nn.Module, tokenizer: Any, name: str) -> None:
    rows = encoder.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model {name!r} embeds only {rows}: "
                         "they do not belong together; set model.tokenizer to the model's own tokenizer")


def save_encoder(encoder: nn.Module, tokenizer: Any, out_dir: Path) -> None:
    """Write to a temp folder, then rename, so a crash never leaves half an encoder behind."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    encoder.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


class MultiTaskModel(nn.Module):
    """A shared encoder and an `nn.ModuleDict` of heads keyed by task name."""

    def __init__(self, encoder: nn.Module, specs: list[TaskSpec]):
        super().__init__()
        self.encoder = encoder
        self.specs = {spec.name: spec for spec in specs}
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({s.name: family_of(s).make_head(s, hidden) for s in specs})
        self.last_token_pooling = encoder.config.model_type in _LAST_TOKEN_POOLING
        # Set by speed.prepare (speed.unpadded): runs the encoder on batches packed by data.collate_packed.
        self.packed_encoder = None

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.last_token_pooling:
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        return hidden[:, 0]

    def forward(self, task: str, batch: dict[str, torch.Tensor]):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        # Multiple choice batches are [batch, choices, length]: encode every choice as its own row.
        flat_ids, flat_mask = ids.view(-1, ids.size(-1)), mask.view(-1, mask.size(-1))
        if self.packed_encoder is not None and "cu_seqlens" in batch:
            hidden = self.packed_encoder(batch, flat_mask)
        else:
            hidden = self.encoder(input_ids=flat_ids, attention_mask=flat_mask).last_hidden_state
        pooled = self.pool(hidden, flat_mask)
        return family_of(self.specs[task]).forward(self.heads[task], hidden, pooled, batch)
