"""Packed (unpadded) rows for the encoder, and CUDA graphs of its forward and backward: the machinery
behind `speed.unpadded` and `speed.cuda_graphs` (speed.py decides when to use it).

A packed micro batch is every real token in one row, with per-sequence position ids and cu_seqlens
(data.collate_packed). Attention stays within each sequence: on CUDA in bf16/fp16 a varlen kernel of those
PyTorch's SDPA uses itself (flash-attention 2, or cuDNN's fused attention with `speed.attention: cudnn`),
checked against SDPA once per device, forward, backward and dropout; per-sequence padded SDPA elsewhere.
`PackedEncoder` runs the encoder that way and hands the heads the padded [rows, L, H] layout; with `_Graphs`
it replays one captured forward and backward graph per packed-length bucket.
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch

from .into_grad import embedding_into_grad, ensure_grads, linear_into_grad

log = logging.getLogger(__name__)

ATTENTION = "stilts_varlen"  # the name registered with transformers' AttentionInterface
# Encoders whose embeddings take explicit position_ids and whose attention goes through AttentionInterface,
# with the first position id of a sequence: RoBERTa-style models count from padding_idx + 1.
_PACKABLE = {"xlm-roberta": "pad+1", "roberta": "pad+1", "camembert": "pad+1", "bert": "zero"}
_PASSED: dict[tuple[str, int], bool] = {}  # (kernel, CUDA device index) -> it passed the self-test
_CHOSEN: dict[int, Optional[str]] = {}  # CUDA device index -> the varlen kernel packed rows use; None: padded SDPA


# ---------------------------------------------------------------------------------------------------
# Attention over packed rows.


# Varlen attention over packed sequences ([T, H, D] q, k, v and out; cu_seqlens), with dropout, from the kernels
# PyTorch's SDPA uses itself, so no flash_attn package is needed. Each kernel is a forward that returns
# (out, lse, philox seed, philox offset) and a backward that takes them back; _Varlen is their autograd.


def _flash_forward(q, k, v, cu, max_len, dropout, scale):
    out, lse, seed, offset, _ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu, cu, max_len, max_len, dropout, False, False, scale=scale)
    return out, lse, seed, offset


def _flash_backward(grad, q, k, v, out, lse, cu, seed, offset, max_len, dropout, scale):
    return torch.ops.aten._flash_attention_backward(
        grad, q, k, v, out, lse, cu, cu, max_len, max_len, dropout, False, seed, offset, scale=scale)


# cuDNN's fused attention. Why a second kernel: on Hopper flash-attention 2's backward tiles 128 x 128, so an
# MNLI sequence of ~46 tokens fills an eighth of its tile; cuDNN's tile 64 x 64 (the padded path's profile on
# an H200 shows them). Its logsumexp layout differs across PyTorch releases: it only goes from this forward to
# this backward.
def _cudnn_forward(q, k, v, cu, max_len, dropout, scale):
    out, lse, _, _, _, _, seed, offset, _ = torch.ops.aten._cudnn_attention_forward(
        q, k, v, None, cu, cu, max_len, max_len, True, dropout, False, False, scale=scale)
    return out, lse, seed, offset


def _cudnn_backward(grad, q, k, v, out, lse, cu, seed, offset, max_len, dropout, scale):
    # attn_bias=None: an undefined tensor, which the op reads as "no bias".
    return torch.ops.aten._cudnn_attention_backward(
        grad, q, k, v, out, lse, seed, offset, None, cu, cu, max_len, max_len, dropout, False, scale=scale)


_VARLEN_OPS = {"flash": (_flash_forward, _flash_backward), "cudnn": (_cudnn_forward, _cudnn_backward)}


class _Varlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernel: str, q, k, v, cu, max_len: int, dropout: float, scale: float):
        out, lse, seed, offset = _VARLEN_OPS[kernel][0](q, k, v, cu, max_len, dropout, scale)
        ctx.save_for_backward(q, k, v, out, lse, cu, seed, offset)
        ctx.kernel, ctx.max_len, ctx.dropout, ctx.scale = kernel, max_len, dropout, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        dq, dk, dv = _VARLEN_OPS[ctx.kernel][1](grad.contiguous(), *ctx.saved_tensors, ctx.max_len, ctx.dropout,
                                                ctx.scale)
        return None, dq, dk, dv, None, None, None, None


def _flash_varlen(q, k, v, cu, max_len: int, dropout: float, scale: float) -> torch.Tensor:
    return _Varlen.apply("flash", q, k, v, cu, max_len, dropout, scale)


@torch.compiler.disable  # aten._cudnn_attention_forward has no fake kernel to trace: compiled layers break here
def _cudnn_varlen(q, k, v, cu, max_len: int, dropout: float, scale: float) -> torch.Tensor:
    return _Varlen.apply("cudnn", q, k, v, cu, max_len, dropout, scale)


# The varlen kernels packed rows can use on CUDA, by `speed.attention` name.
KERNELS: dict[str, Callable[..., torch.Tensor]] = {"flash": _flash_varlen, "cudnn": _cudnn_varlen}


def _segment_sdpa(query, key, value, cu, max_len: int, dropout: float, scale: Optional[float]):
    """Fallback ([1, H, T, D] in, [1, T, H, D] out): scatter the packed rows into a padded
    [segments, H, max_len, D] batch, run SDPA with a key-padding mask, gather back. Costs what the padded
    path costs; serves CPU, float32 and GPUs without the flash kernels."""
    heads, total, dim = query.size(1), query.size(2), query.size(3)
    tokens = torch.arange(total, device=query.device, dtype=cu.dtype)
    segment = torch.searchsorted(cu[1:].contiguous(), tokens, right=True)
    slot = tokens.long() - cu.long()[segment]
    lengths = (cu[1:] - cu[:-1]).long().clamp(min=1)  # empty rows attend to one zero slot, never to nothing
    static = torch.compiler.is_compiling() or (query.is_cuda and torch.cuda.is_current_stream_capturing())
    if not static:  # eager: pad to this batch's longest row, not to max_len (one host read per layer)
        max_len = int(lengths.max())
    keep = (torch.arange(max_len, device=query.device)[None, :] < lengths[:, None])[:, None, None, :]

    def pad(x):
        out = x.new_zeros(cu.numel() - 1, max_len, heads, dim)
        out[segment, slot] = x[0].transpose(0, 1)
        return out.transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(pad(query), pad(key), pad(value), attn_mask=keep,
                                                           dropout_p=dropout, scale=scale)
    return out.transpose(1, 2)[segment, slot].unsqueeze(0)


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers AttentionInterface function: packed rows when the call carries cu_seq_lens_q, and
    otherwise exactly "sdpa" (evaluation keeps padded batches)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    kernel = _CHOSEN.get(query.device.index) if query.is_cuda else None
    if kernel is not None and query.dtype in (torch.float16, torch.bfloat16):
        q, k, v = (x.transpose(1, 2)[0] for x in (query, key, value))  # [1, H, T, D] -> [T, H, D], no copy
        scale = scaling if scaling is not None else query.size(-1) ** -0.5
        out = KERNELS[kernel](q, k, v, cu, kwargs["max_length_q"], dropout, scale)
        return out.unsqueeze(0), None
    return _segment_sdpa(query, key, value, cu, kwargs["max_length_q"], dropout, scaling), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # padded batches get sdpa's mask; packed ones none


def select_attention(device: torch.device, preferred: str = "flash") -> Optional[str]:
    """The varlen kernel packed rows use on `device` from now on: `preferred` if it passes its self-test,
    else flash-attention, else None (per-sequence padded SDPA). Each kernel is tested once per device."""
    if device.type != "cuda":
        return None
    index = _index(device)
    chosen = next((name for name in dict.fromkeys([preferred, "flash"]) if _passes(name, index)), None)
    if chosen != preferred:
        log.warning("%s varlen attention unavailable on cuda:%d; packed rows use %s", preferred, index,
                    f"{chosen} varlen attention" if chosen else "padded SDPA")
    _CHOSEN[index] = chosen
    return chosen


def chosen_attention(device: torch.device) -> str:
    """What packed rows on `device` run, in words (for benchmarks and logs)."""
    kernel = _CHOSEN.get(_index(device)) if device.type == "cuda" else None
    return f"{kernel} varlen" if kernel else "padded SDPA per sequence"


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _passes(kernel: str, index: int) -> bool:
    if (kernel, index) not in _PASSED:
        try:
            # Its dropout draws must not shift the training run's random stream.
            with torch.random.fork_rng(devices=[index]):
                problem = ("needs compute capability 8.0" if torch.cuda.get_device_capability(index) < (8, 0)
                           else self_test(KERNELS[kernel], f"cuda:{index}"))
        except Exception as err:  # any kernel/dispatch problem means: not this kernel
            problem = f"{type(err).__name__}: {err}"
        if problem:
            log.warning("%s varlen attention failed its self-test on cuda:%d: %s", kernel, index, problem)
        _PASSED[kernel, index] = problem is None
    return _PASSED[kernel, index]


def self_test(run: Callable[..., torch.Tensor], device: str) -> Optional[str]:
    """What is wrong with the varlen kernel `run` ([T, H, D] q, k, v, cu_seqlens, max_len, dropout, scale) on
    `device`, or None. Without dropout: forward and gradients against fp32 SDPA per sequence. With dropout:
    that it drops, and that the backward applies the forward's mask. out = D V is linear in V, so
    <out, g> = <V, dV> for any g exactly when dV = D^T g with the forward's D; another mask misses by about
    the size of the product itself."""
    gen = torch.Generator(device=device).manual_seed(0)
    # Trailing empty sequences as collate_packed pads cu_seqlens with (a fixed count per CUDA-graph bucket).
    lengths, heads, dim = [5, 17, 64, 3, 1, 46, 0, 0], 4, 64
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(sum(lengths), heads, dim, device=device, generator=gen, dtype=torch.bfloat16)
               .requires_grad_() for _ in range(3))
    weight = torch.randn(sum(lengths), heads, dim, device=device, generator=gen)
    out = run(q, k, v, cu, 64, 0.0, dim ** -0.5)
    grads = torch.autograd.grad((out.float() * weight).sum(), (q, k, v))
    rq, rk, rv = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        *(x[a:b].transpose(0, 1) for x in (rq, rk, rv))).transpose(0, 1)
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
    ref_grads = torch.autograd.grad((ref * weight).sum(), (rq, rk, rv))
    for name, got, want in zip(("output", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads)):
        if not torch.allclose(got.float(), want, atol=3e-2, rtol=3e-2):
            return f"{name} differs from SDPA's by up to {(got.float() - want).abs().max().item():.3g}"
    out = run(q, k, v, cu, 64, 0.5, dim ** -0.5)
    if torch.allclose(out.float(), ref, atol=3e-2, rtol=3e-2):
        return "dropout 0.5 left the output unchanged"
    (dv,) = torch.autograd.grad((out.float() * weight).sum(), (v,))
    forward, backward = (out.float() * weight).sum().item(), (v.float() * dv.float()).sum().item()
    typical = (out.float().norm() * weight.norm()).item() / weight.numel() ** 0.5  # one such product's size
    if abs(forward - backward) > 0.05 * typical:
        return f"with dropout the backward's mask is not the forward's (<out, g> {forward:.4g}, <v, dv> {backward:.4g})"
    return None


def position_offset(config: Any) -> Optional[int]:
    """First position id of a sequence for this encoder, or None when packing is not supported for it."""
    kind = _PACKABLE.get(getattr(config, "model_type", ""))
    if kind is None:
        return None
    return config.pad_token_id + 1 if kind == "pad+1" else 0


# ---------------------------------------------------------------------------------------------------
# The packed encoder, optionally replayed from CUDA graphs.


class PackedEncoder:
    """Runs the encoder on a packed batch; returns hidden states in the padded [rows, L, H] layout the heads
    expect, zero at padding. MultiTaskModel calls it for batches that carry `cu_seqlens`."""

    def __init__(self, encoder: torch.nn.Module, max_seqlen: int, graphs: Optional["_Graphs"] = None):
        self.encoder, self.max_seqlen, self.graphs = encoder, max_seqlen, graphs

    def encode(self, ids: torch.Tensor, pos: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=ids, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                            max_length_q=self.max_seqlen, max_length_k=self.max_seqlen).last_hidden_state

    def __call__(self, batch: dict[str, torch.Tensor], flat_mask: torch.Tensor) -> torch.Tensor:
        ids, pos, cu = batch["packed_ids"], batch["packed_pos"], batch["cu_seqlens"]
        if self.graphs is not None and self.encoder.training and torch.is_grad_enabled():
            packed = self.graphs.run(ids, pos, cu)
        else:
            packed = self.encode(ids, pos, cu)
        index = batch["unpack_index"]
        hidden = packed[0].index_select(0, index.reshape(-1)).view(*index.shape, -1)
        return hidden.masked_fill(~flat_mask.bool().unsqueeze(-1), 0.0)


class _Replay(torch.autograd.Function):
    """Forward: copy the batch into the bucket's static inputs and replay its forward graph. Backward:
    replay its backward graph, which adds the encoder's gradients into their `.grad` tensors in place."""

    @staticmethod
    def forward(ctx, anchor, entry, ids, pos, cu):
        entry.ids.copy_(ids)
        entry.pos.copy_(pos)
        entry.cu.copy_(cu)
        entry.fwd.replay()
        ctx.entry = entry
        return entry.out.clone()

    @staticmethod
    def backward(ctx, grad):
        entry = ctx.entry
        if any(p.grad is not g for p, g in zip(entry.params, entry.grads)):
            raise RuntimeError("the encoder's .grad tensors were replaced since the CUDA graphs were captured; "
                               "with speed.cuda_graphs, zero gradients with zero_grad(set_to_none=False)")
        entry.grad_out.copy_(grad)
        entry.bwd.replay()
        # The replay wrote into .grad behind autograd's back: say so, as an in-place op would (FlatAdamW
        # reads "got a gradient this step" from these version counters).
        try:
            torch.autograd.graph.increment_version(entry.grads)
        except TypeError:  # torch before 2.5 takes one tensor at a time
            for g in entry.grads:
                torch.autograd.graph.increment_version(g)
        return None, None, None, None, None


class _Graphs:
    """One forward and one backward CUDA graph of the encoder per (packed length, cu_seqlens length),
    captured on first use; all share one memory pool (only one bucket is ever in flight). `fused_wgrad`:
    the encoder's linear layers accumulate their weight gradients into `.grad` themselves (into_grad.py)
    until close()."""

    def __init__(self, encoder: torch.nn.Module, encode: Callable, bf16: bool, device: torch.device,
                 fused_wgrad: bool = False):
        self.encode, self.bf16 = encode, bf16
        self.encoder = encoder
        self.hooks = contextlib.ExitStack()
        # For the graphs' whole life: compiled layers are traced once, with the layers as they will run.
        self.fused_linears = (self.hooks.enter_context(linear_into_grad(encoder, torch.bfloat16 if bf16 else None))
                              if fused_wgrad else [])
        self.params = [p for p in encoder.parameters() if p.requires_grad]
        # Warm-up backward only needs the kernels to run once, not 2 GB of weight gradients.
        self.small = [p for p in self.params if p.dim() < 2]
        # The eager warm-up before each capture allocates from the graphs' own pool (a torch.cuda.MemPool, where
        # this torch has one): a bucket's warm-up then reuses the blocks the graphs captured so far leave free.
        # From the default pool it added a second copy of the activations to reserved memory next to the pool
        # (each capture starts with empty_cache, but the pool is not emptied and the next warm-up comes after).
        self.mempool = torch.cuda.MemPool() if hasattr(torch.cuda, "use_mem_pool") else None
        self.pool = self.mempool.id if self.mempool is not None else torch.cuda.graph_pool_handle()
        # One side stream for every warm-up and capture: the allocator reuses a free block only on the stream it
        # was allocated on, and cuBLAS keeps a workspace per stream it ran on (tens of MB each on Hopper).
        self.side = torch.cuda.Stream(device)
        self.entries: dict[tuple[int, int], Optional[SimpleNamespace]] = {}  # None: capture failed
        self.failed: list[str] = []
        self.anchor = torch.zeros((), device=device, requires_grad=True)  # lets autograd reach _Replay.backward
        self.buffers: dict[str, torch.Tensor] = {}  # _shared's
        self.mode = {"capture_error_mode": "thread_local"} if "capture_error_mode" in inspect.signature(
            torch.cuda.graph.__init__).parameters else {}  # collate threads may pin memory meanwhile

    def _autocast(self):
        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def _warm_up_pool(self):
        # Only this thread's allocations: the warm-up backward's (autograd's device thread) stay in the default
        # pool, a layer's worth at a time.
        return torch.cuda.use_mem_pool(self.mempool) if self.mempool is not None else contextlib.nullcontext()

    def ensure(self, ids: torch.Tensor, pos: torch.Tensor, cu: torch.Tensor) -> Optional[SimpleNamespace]:
        key = (ids.size(1), cu.size(0))
        if key not in self.entries:
            try:
                self.entries[key] = self._capture(ids, pos, cu)
            except Exception as err:  # capture records, it runs nothing: this bucket just stays eager
                log.warning("CUDA graph capture failed for %d packed tokens (%s: %s); running it eagerly",
                            ids.size(1), type(err).__name__, err)
                self.entries[key] = None
                self.failed.append(f"{key}: {type(err).__name__}: {err}")
        return self.entries[key]

    def run(self, ids: torch.Tensor, pos: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        entry = self.ensure(ids, pos, cu)
        if entry is None:
            return self.encode(ids, pos, cu)
        return _Replay.apply(self.anchor, entry, ids, pos, cu)

    def _capture(self, ids, pos, cu) -> SimpleNamespace:
        e = SimpleNamespace(ids=ids.clone(), pos=pos.clone(), cu=cu.clone(), params=self.params)
        ensure_grads(self.params)
        e.grads = [p.grad for p in self.params]
        side = self.side
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self._warm_up_pool():
            for _ in range(2):  # run every kernel once outside capture (workspaces, lazy init, compilation)
                with self._autocast():
                    out = self.encode(e.ids, e.pos, e.cu)
                # A zero output gradient: fused weight gradients (and anything else a backward adds into
                # .grad) receive exact zeros, so a capture in the middle of a step changes no gradient.
                torch.autograd.grad(out, self.small or self.params[:1], torch.zeros_like(out), allow_unused=True)
                shape, dtype = out.shape, out.dtype
                del out
        torch.cuda.current_stream().wait_stream(side)
        e.out, e.grad_out = self._shared("out", shape, dtype), self._shared("grad_out", shape, dtype)
        e.fwd, e.bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        # The recorded backward then adds the word-embedding rows into .grad itself (see the Function).
        with torch.cuda.graph(e.fwd, pool=self.pool, stream=side, **self.mode), embedding_into_grad(self.encoder):
            with self._autocast():
                out = self.encode(e.ids, e.pos, e.cu)
            e.out.copy_(out.detach())
        with torch.cuda.graph(e.bwd, pool=self.pool, stream=side, **self.mode):
            torch.autograd.backward(out, e.grad_out)
        del out  # its pool block is free for later captures: e.out holds the result
        log.info("captured CUDA graphs for a packed length of %d tokens", ids.size(1))
        return e

    def _shared(self, name: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """A view of one buffer per `name` that every bucket shares, as only one bucket is ever in flight: kept
        per bucket, the encoder's output and its gradient cost ~25 buckets x T x 1024 x 4 bytes twice over. A
        bucket larger than the buffer gets a new one (the graphs before keep theirs); reserve() captures the
        largest bucket first."""
        numel = shape.numel()
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
            buffer = self.buffers[name] = torch.zeros(numel, dtype=dtype, device=self.anchor.device)
        return buffer[:numel].view(shape)

    def pool_gb(self) -> Optional[float]:
        """What the graphs' pool holds from the device now (GiB), or None where this torch cannot say: with
        the peak reserved figure, it tells the graphs' memory from the rest of the step's."""
        if self.mempool is None:
            return None
        try:
            return sum(s["total_size"] for s in torch.cuda.memory_snapshot(self.mempool.id)) / 2 ** 30
        except Exception:  # torch before 2.6 takes no pool id
            return None

    def close(self) -> None:
        """The linear layers' own forward back; the captured graphs are not replayed after this."""
        self.hooks.close()
        self.entries.clear()
        self.buffers.clear()
