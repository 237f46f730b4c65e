"""What differs between model families behind the same heads: how the encoder is run and how it pools.

Three kinds, told apart by the loaded module, not by a list of names, so an unseen checkpoint works:
  encoder     XLM-R, mBERT, mDeBERTa, RemBERT ...: bidirectional; pools the first token (<s>/[CLS]).
  decoder     GPT-2, Llama, Qwen ...: causal, so only the last real token has read the whole input.
  seq2seq     T5/mT5: by default only the encoder side is loaded (`T5EncoderModel`, no CLS token: mean
              pooling); with `model.seq2seq_side: decoder` the whole model runs, the decoder reading the
              input shifted right (as T5/BART ForSequenceClassification do), and pools its last real token.
`model.pooling` (first | last | mean) overrides the kind's default.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

POOLING_MODES = ("auto", "first", "last", "mean")
SEQ2SEQ_SIDES = ("encoder", "decoder")
# The default pooling of each kind (see the module docstring for the reasons).
AUTO_POOLING = {"encoder": "first", "decoder": "last", "seq2seq-encoder": "mean", "seq2seq-decoder": "last"}


def _first(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


def _last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # The position of the last 1 in the mask: right padding (collate) and left padding alike.
    positions = torch.arange(mask.size(1), device=mask.device)
    last = (mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def _mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


POOLERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "first": _first, "last": _last, "mean": _mean}


def is_seq2seq(config: Any) -> bool:
    """An encoder-decoder family. Not `config.is_encoder_decoder`: T5EncoderModel sets that to False in
    the config it saves, and the saved encoder must still load as T5EncoderModel."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES


def is_decoder_only(config: Any) -> bool:
    """A causal LM family without a masked-LM variant (BERT and XLM-R have both, GPT-2 and Llama only the
    first); transformers' own auto tables say which, so new decoder families need no list here."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    model_type = config.model_type
    return (not is_seq2seq(config) and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def runs_decoder(model: Any) -> bool:
    """Whether `model` is a whole encoder-decoder (it then needs decoder inputs), not one side of it."""
    return "decoder_input_ids" in inspect.signature(model.forward).parameters


def kind(model: Any) -> str:
    """A key of AUTO_POOLING for a loaded model."""
    config = model.config
    if is_seq2seq(config):
        return "seq2seq-decoder" if runs_decoder(model) else "seq2seq-encoder"
    return "decoder" if is_decoder_only(config) else "encoder"


def resolve_pooling(model: Any, requested: str = "auto") -> str:
    if requested not in POOLING_MODES:
        raise ValueError(f"model.pooling: {requested!r} is not one of {', '.join(POOLING_MODES)}")
    return AUTO_POOLING[kind(model)] if requested == "auto" else requested


def encoder_class_name(config: Any, side: str) -> str:
    """The transformers class that holds what the heads read: AutoModel's class, except for the encoder
    side of an encoder-decoder (T5Model -> T5EncoderModel, MT5Model -> MT5EncoderModel)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
    import transformers

    if side not in SEQ2SEQ_SIDES:
        raise ValueError(f"model.seq2seq_side: {side!r} is not one of {', '.join(SEQ2SEQ_SIDES)}")
    if config.model_type not in MODEL_MAPPING_NAMES:
        raise ValueError(f"transformers has no model class for model type {config.model_type!r}; "
                         "upgrade transformers or choose a supported checkpoint")
    name = MODEL_MAPPING_NAMES[config.model_type]
    name = name[0] if isinstance(name, tuple) else name  # funnel lists the full model first
    if not is_seq2seq(config) or side == "decoder":
        return name
    encoder_name = name.replace("Model", "EncoderModel")
    if not hasattr(transformers, encoder_name):
        raise ValueError(f"{config.model_type} has no standalone encoder class ({encoder_name}); "
                         "set model.seq2seq_side=decoder to run the whole model and pool the decoder")
    return encoder_name


def _run(model: Any, ids: torch.Tensor, mask: torch.Tensor, decoder: bool, **kwargs: Any) -> Any:
    if not decoder:
        return model(input_ids=ids, attention_mask=mask, **kwargs)
    # Teacher forcing on the input itself, shifted right by the decoder start token: decoder position i
    # reads input tokens < i and the whole encoder output, so the last real position has seen everything.
    start = torch.full_like(ids[:, :1], model.config.decoder_start_token_id)
    decoder_ids = torch.cat([start, ids[:, :-1]], dim=1)
    return model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, decoder_attention_mask=mask,
                 **kwargs)


def hidden_states(model: Any, ids: torch.Tensor, mask: torch.Tensor, decoder: bool = False) -> torch.Tensor:
    """[rows, length, hidden]: the encoder's last layer, or with `decoder` (`runs_decoder(model)`, checked
    once by the caller) the decoder's last layer of a whole encoder-decoder."""
    return _run(model, ids, mask, decoder).last_hidden_state


def layer_states(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every layer's hidden states (index 0 = embeddings) of what the heads read: the decoder's for a whole
    encoder-decoder, the model's own otherwise. `len(...) - 1` is the depth `retrieval.layer` counts in."""
    decoder = runs_decoder(model)
    out = _run(model, ids, mask, decoder, output_hidden_states=True)
    return out.decoder_hidden_states if decoder else out.hidden_states


def depth(model: Any) -> int:
    """Layers of the stack `layer_states` returns (T5's decoder may be deeper or shallower than its encoder)."""
    config = model.config
    if runs_decoder(model):
        return getattr(config, "num_decoder_layers", None) or config.num_hidden_layers
    return config.num_hidden_layers
