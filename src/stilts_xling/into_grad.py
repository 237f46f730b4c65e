"""Backward shortcuts for the encoder under CUDA graphs: weight gradients written straight into `.grad`
(the static tensors the graphs accumulate into) instead of autograd's new tensor plus an add.

- Word embeddings (`embedding_into_grad`): one index_add of the batch's rows, not a dense [vocab, hidden]
  gradient. Always on under CUDA graphs.
- Linear layers (`linear_into_grad`, `speed.fused_wgrad`): under bf16 autocast, autograd computes a weight
  gradient as a bf16 GEMM, casts it to fp32 (a kernel), then AccumulateGrad adds it into `.grad` (a kernel):
  for XLM-R Large ~290 extra kernels and ~2.4 GB of memory traffic a micro batch. Here the GEMM itself
  accumulates in fp32 into `.grad` (cuBLAS beta=1 through `addmm(..., out_dtype=float32)`), which is also
  a little more exact: the bf16 rounding of each micro batch's gradient is gone. The weight then gets no
  gradient through autograd, so this is for one process only (DDP waits for autograd's gradients), with
  `.grad` tensors that exist before the forward (CUDA graphs keep them).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Word embeddings.


class _EmbeddingIntoGrad(torch.autograd.Function):
    """A word-embedding lookup whose backward adds the rows' gradients straight into `weight.grad` (the
    static tensor the CUDA graphs accumulate into) with one index_add over the batch's tokens. Autograd's
    own backward materializes a dense [vocab, hidden] fp32 gradient (1 GB for XLM-R's 250k words) and then
    adds it into `.grad`: about 4 GB of memory traffic and 1 GB of graph-pool memory a step, for ~1.5k
    touched rows. Rows of `padding_idx` get nothing, as in nn.Embedding."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return torch.nn.functional.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        flat_ids, weight = ids.reshape(-1), ctx.weight
        rows = grad.reshape(-1, grad.size(-1)).to(weight.grad.dtype)
        if ctx.padding_idx is not None:
            rows = rows.masked_fill((flat_ids == ctx.padding_idx).unsqueeze(-1), 0.0)
        weight.grad.index_add_(0, flat_ids, rows)
        return None, None, None


@contextlib.contextmanager
def embedding_into_grad(encoder: torch.nn.Module):
    """While active, the encoder's word embeddings use _EmbeddingIntoGrad (their weight must have a
    `.grad` tensor). Plain nn.Embedding only: max_norm, sparse or scaled gradients keep autograd's path."""
    emb = encoder.get_input_embeddings()
    plain = (type(emb) is torch.nn.Embedding and emb.max_norm is None and not emb.sparse
             and not emb.scale_grad_by_freq and emb.weight.requires_grad)
    if plain:
        emb.forward = lambda ids: _EmbeddingIntoGrad.apply(ids, emb.weight, emb.padding_idx)
    try:
        yield plain
    finally:
        if plain:
            del emb.forward  # back to the class's forward


# ---------------------------------------------------------------------------------------------------
# Linear layers.

_ADDMM_OUT_DTYPE: dict[str, bool] = {}  # device type -> addmm(..., out_dtype=float32) accumulates in place


def _addmm_accumulates(device: torch.device) -> bool:
    """Whether this torch has addmm with an fp32 output for bf16/fp16 inputs and accumulates into `out`
    when it is `self` (checked once per device type, on tiny tensors, against the plain product)."""
    if device.type not in _ADDMM_OUT_DTYPE:
        try:
            a = torch.randn(4, 8, device=device, dtype=torch.bfloat16)
            b = torch.randn(8, 16, device=device, dtype=torch.bfloat16)
            out = torch.ones(4, 16, device=device)
            torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
            want = 1 + a.float() @ b.float()
            _ADDMM_OUT_DTYPE[device.type] = bool(torch.allclose(out, want, rtol=1e-2, atol=1e-2))
        except (RuntimeError, TypeError):
            _ADDMM_OUT_DTYPE[device.type] = False
        if not _ADDMM_OUT_DTYPE[device.type]:
            log.warning("speed.fused_wgrad: this torch has no in-place addmm with an fp32 output on %s; weight "
                        "gradients are added into .grad by a separate kernel", device.type)
    return _ADDMM_OUT_DTYPE[device.type]


def _accumulate_wgrad(grad: torch.Tensor, grad_out: torch.Tensor, x: torch.Tensor) -> None:
    """grad += grad_out^T x over all leading dimensions, accumulated in grad's dtype."""
    g2, x2 = grad_out.reshape(-1, grad_out.size(-1)), x.reshape(-1, x.size(-1))
    if grad.dtype == g2.dtype:
        grad.addmm_(g2.t(), x2)  # one GEMM with beta=1
    elif g2.is_cuda and _addmm_accumulates(g2.device):
        torch.addmm(grad, g2.t(), x2, out_dtype=grad.dtype, out=grad)
    else:
        grad.add_((g2.t() @ x2).to(grad.dtype))


if hasattr(torch.library, "custom_op"):  # torch >= 2.4: an op torch.compile keeps as one opaque, mutating call
    accumulate_wgrad = torch.library.custom_op("stilts::accumulate_wgrad", mutates_args=("grad",))(_accumulate_wgrad)

    @accumulate_wgrad.register_fake
    def _(grad, grad_out, x):
        return None
else:
    accumulate_wgrad = None


class _LinearIntoGrad(torch.autograd.Function):
    """F.linear whose backward adds the weight's gradient into `grad` (the weight's `.grad`) itself and
    returns none for the weight. Computes in `dtype` (the autocast dtype, or the input's) with the casts
    autocast would make; the bias gradient is returned in fp32 as usual."""

    @staticmethod
    def forward(ctx, x, weight, bias, grad, dtype):
        with torch.autocast(x.device.type, enabled=False):
            xc, wc = x.to(dtype), weight.to(dtype)
            out = torch.nn.functional.linear(xc, wc, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(xc, wc, grad)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xc, wc, grad = ctx.saved_tensors
        grad_out = grad_out.to(wc.dtype)
        accumulate_wgrad(grad, grad_out, xc)
        gx = grad_out @ wc if ctx.needs_input_grad[0] else None
        gb = grad_out.reshape(-1, grad_out.size(-1)).sum(0, dtype=torch.float32) if ctx.has_bias else None
        return gx, None, gb, None, None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _linears(encoder: torch.nn.Module) -> list[torch.nn.Linear]:
    """Plain nn.Linear layers with a trainable weight, each used in one place (a module shared across
    layers, as in ALBERT, would reach its saved `.grad` after another use had changed it)."""
    seen: dict[int, int] = {}
    for _, module in encoder.named_modules(remove_duplicate=False):
        seen[id(module)] = seen.get(id(module), 0) + 1
    return [m for m in encoder.modules() if type(m) is torch.nn.Linear and m.weight.requires_grad
            and seen[id(m)] == 1]


def ensure_grads(params) -> None:
    """A zero `.grad` for each parameter that has none: the tensors written into in place."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def _fused_forward(m: torch.nn.Linear, dtype: Optional[torch.dtype]):
    def forward(x: torch.Tensor) -> torch.Tensor:
        ensure_grads([m.weight])  # zero_grad(set_to_none=True) since the last backward: start from zeros
        return _LinearIntoGrad.apply(x, m.weight, m.bias, m.weight.grad, dtype or _compute_dtype(x))
    return forward


@contextlib.contextmanager
def linear_into_grad(encoder: torch.nn.Module, dtype: Optional[torch.dtype] = None):
    """While active, the encoder's linear layers use _LinearIntoGrad, computing in `dtype` (None: the
    autocast dtype when autocast is on, else the input's; a fixed one spares compiled code the query);
    their `.grad` tensors are created (zeros) where missing. CUDA graphs need them to stay these tensors
    (zeroed in place). Yields the patched layers (none where torch lacks custom ops)."""
    layers = _linears(encoder) if accumulate_wgrad is not None else []
    ensure_grads(m.weight for m in layers)
    for m in layers:
        m.forward = _fused_forward(m, dtype)
    try:
        yield layers
    finally:
        for m in layers:
            del m.forward  # back to the class's forward
