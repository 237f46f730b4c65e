"""Speed options of the training loop; each is a `speed.*` config key whose default is the plain path.

XLM-R Large at the paper's batch size (32 MNLI pairs of ~46 tokens) is launch- and optimizer-bound, not
FLOP-bound: padded to 128 a step computes 4k token positions of which 1.5k are real, and ~2,000 kernel
launches a step leave the GPU idle most of the time. So:

- `unpadded`: the real tokens of a micro batch go into one row (data.collate_packed) with per-sequence
  position ids; attention stays within each sequence (flash-attention varlen from PyTorch's own kernels on
  CUDA in bf16/fp16, or cuDNN's with `attention: cudnn`; per-sequence padded SDPA elsewhere). Falls back to
  padded batches, with a warning, for a model this has not been checked on or when the packed and padded
  encoders disagree at start-up.
- `token_budget`: micro batches capped by tokens instead of count; the optimizer step still sees
  `batch_size` examples, each micro batch's loss weighted by its share of the step's loss terms.
- `cuda_graphs`: the encoder's forward and backward are captured once per packed-length bucket and
  replayed (one launch each); gradients accumulate in place, so `zero_grad` keeps the tensors.
- `compile`: torch.compile each encoder layer (regional: one compilation serves all 24 layers). Lengths
  vary from batch to batch; dynamo compiles the first shape static and, at the first other length, a
  length-generic version (automatic dynamic): two compilations in all. Length-grouped batches of 32 MNLI
  pairs pack to ~600-3,500 tokens, ~25 buckets: a static compilation per bucket would cost minutes.
- `buckets` / `bucket_steps`: packed lengths are padded up to a few sizes (<6.25% padding by default) so
  that CUDA graphs are captured once per size, not per length.
- `workers`: threads that collate (and pin) the next batches while the GPU works.
- `flat_adamw`: parameters, gradients and AdamW moments in flat buffers, one kernel a step (flat_adamw.py).
- `fused_wgrad` (with `cuda_graphs`): linear layers accumulate their weight gradients into `.grad` in the
  GEMM itself, in fp32 (into_grad.py), instead of a bf16 GEMM, a cast and an add.
- `lazy_embedding` (with `flat_adamw`): word-embedding rows take their AdamW steps when looked up
  (lazy_rows.py); train.py sets it up with the optimizer.

The packed rows, their attention and the CUDA graphs are in packing.py; this module decides when to use
them and builds the batches.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

from .config import SpeedConfig  # noqa: F401  (re-exported: the loop and the bench take it from here)
from .evaluate import autocast
from .packing import ATTENTION, PackedEncoder, _Graphs, _register, chosen_attention, position_offset, select_attention

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# torch.compile, regionally: each repeated layer, so one compilation serves all of them.


def _repeated_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    lists = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1
             and len({type(x) for x in m}) == 1]
    return list(max(lists, key=len)) if lists else []


def _compile_layers(encoder: torch.nn.Module) -> list[torch.nn.Module]:
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a compile failure runs that code eagerly instead
    for name in ("recompile_limit", "cache_size_limit"):  # head room for train/eval and dtype variants
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    layers = _repeated_layers(encoder)
    for layer in layers:
        layer.compile(dynamic=None)  # automatic dynamic: static first shape, length-generic from the second
    return layers


def _set_compiled(layers: list[torch.nn.Module], impls: list[Any]) -> list[Any]:
    before = [getattr(layer, "_compiled_call_impl", None) for layer in layers]
    for layer, impl in zip(layers, impls):
        layer._compiled_call_impl = impl
    return before


# ---------------------------------------------------------------------------------------------------
# Background collation.


def prefetch(jobs: Iterable[Callable[[], Any]], workers: int) -> Iterator[Any]:
    """The results of `jobs`, in order. With workers > 0 up to 2 * workers + 2 of them run ahead in
    threads (collation is list work plus tensor copies; threads avoid copying features to processes)."""
    if workers <= 0:
        for job in jobs:
            yield job()
        return
    from concurrent.futures import ThreadPoolExecutor

    jobs = iter(jobs)
    with ThreadPoolExecutor(workers, thread_name_prefix="stilts-collate") as pool:
        window = collections.deque(pool.submit(job) for job in itertools.islice(jobs, 2 * workers + 2))
        while window:
            result = window.popleft().result()
            nxt = next(jobs, None)
            if nxt is not None:
                window.append(pool.submit(nxt))
            yield result


# ---------------------------------------------------------------------------------------------------
# The plan: what the training loop asks of the speed options.


@dataclass
class MicroBatch:
    batch: dict[str, torch.Tensor]
    examples: int
    tokens: int  # sum of data.feature_length, as the progress bar counts them
    real_tokens: int  # non-pad tokens of every row (all choices)
    computed_tokens: int  # token positions the encoder runs: packed length, or rows x padded width
    weight: Optional[float] = None  # share of the step's loss terms (SpeedPlan.step_batches); None = 1/count


def loss_weights(micro_batches: list[MicroBatch]) -> list[float]:
    """What each micro batch's loss is multiplied by: its `weight`, or 1/count when none was set."""
    return [1 / len(micro_batches) if m.weight is None else m.weight for m in micro_batches]


class SpeedPlan:
    """Collation, micro-batching and model hooks for one training run; `close()` undoes the model hooks."""

    def __init__(self, model: Any, speed: SpeedConfig, device: torch.device, bf16: bool, pad_id: int,
                 max_seqlen: int):
        self.speed, self.device, self.pad_id, self.bf16 = speed, device, pad_id, bf16 and device.type == "cuda"
        self.model = model
        self.encoder = model.encoder
        self.max_seqlen = max(64, -(-max_seqlen // 64) * 64)  # also the longest filler piece
        self.unpadded = speed.unpadded and self._enable_unpadded(bf16)
        # What packed rows' attention runs (None: padded batches), for benchmarks and the run log.
        self.attention = (chosen_attention(device) if self.bf16 else "padded SDPA per sequence") if self.unpadded else None
        self.graphs: Optional[_Graphs] = None
        if speed.cuda_graphs:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1
            if device.type != "cuda" or not self.unpadded or distributed:
                # A replayed backward would also skip DDP's gradient all-reduce hooks.
                log.warning("speed.cuda_graphs needs CUDA, speed.unpadded and a single process; "
                            "running without CUDA graphs")
            else:
                packed = PackedEncoder(self.encoder, self.max_seqlen)
                self.graphs = _Graphs(self.encoder, packed.encode, bf16 and device.type == "cuda", device,
                                      fused_wgrad=speed.fused_wgrad)
        if self.unpadded:
            model.packed_encoder = PackedEncoder(self.encoder, self.max_seqlen, self.graphs)
        self.compiled = _compile_layers(self.encoder) if speed.compile else []
        self.bucketed = self.graphs is not None  # compiled code is length-generic after its second shape
        self.steps = speed.bucket_steps
        self.warmed: set[tuple] = set()  # batch shapes prewarm() has run
        # CUDA graphs accumulate into the captured .grad tensors, so they must survive zero_grad.
        self.keep_grads = self.graphs.params if self.graphs is not None else None
        self.pin = device.type == "cuda"

    def _enable_unpadded(self, bf16: bool) -> bool:
        config = self.encoder.config
        self.offset = position_offset(config)
        if self.offset is None or not hasattr(self.encoder, "set_attn_implementation"):
            log.warning("speed.unpadded: packing is not supported for model type %r; using padded batches",
                        getattr(config, "model_type", "?"))
            return False
        _register()
        if self.device.type == "cuda" and bf16:
            select_attention(self.device, self.speed.attention)
        self.previous_attention = config._attn_implementation
        self.encoder.set_attn_implementation(ATTENTION)
        problem = self._check_packed(bf16)
        if problem:
            log.warning("speed.unpadded: %s; using padded batches", problem)
            self.encoder.set_attn_implementation(self.previous_attention)
            return False
        return True

    @torch.no_grad()
    def _check_packed(self, bf16: bool) -> Optional[str]:
        """Padded and packed encoders must agree on a few random sequences (eval mode, no dropout)."""
        from .data import collate_packed

        vocab = self.encoder.get_input_embeddings().num_embeddings
        gen = torch.Generator().manual_seed(0)
        lengths = [min(n, self.max_seqlen) for n in (7, 19, 3, 12)]
        features = [{"input_ids": [int(t) for t in torch.randint(3, vocab, (n,), generator=gen)
                                   if int(t) != self.pad_id] or [3]} for n in lengths]
        batch = {k: v.to(self.device) for k, v in collate_packed(features, self.pad_id, self.offset,
                                                                 self.max_seqlen).items()}
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with autocast(self.device, bf16):
                padded = self.encoder(input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"]).last_hidden_state.float()
                packed = PackedEncoder(self.encoder, self.max_seqlen)(batch, batch["attention_mask"]).float()
        except Exception as err:  # an encoder that does not take packed rows
            return f"the packed forward failed ({type(err).__name__}: {err})"
        finally:
            self.encoder.train(was_training)
        mask = batch["attention_mask"].bool()
        err = (padded[mask] - packed[mask]).abs().max().item()
        scale = padded[mask].abs().max().item()
        tol = 0.05 * scale if bf16 and self.device.type == "cuda" else 1e-4 * max(1.0, scale)
        return None if err <= tol else f"packed and padded hidden states differ by {err:.3g} (tolerance {tol:.3g})"

    # Batches -------------------------------------------------------------------------------------------

    def micro_batches(self, features: list[dict]) -> list[list[dict]]:
        from .data import split_by_tokens

        if not self.speed.token_budget:
            return [features]
        return split_by_tokens(features, self.speed.token_budget, packed=self.unpadded)

    def collate(self, features: list[dict], max_rows: int) -> tuple[dict[str, torch.Tensor], int, int]:
        """(batch, real tokens, computed tokens)."""
        from .data import bucket_length, collate, collate_packed, sequence_lengths

        real = sum(n for f in features for n in sequence_lengths(f))
        if self.unpadded:
            length = bucket_length(real, self.speed.buckets, self.steps) if self.bucketed else None
            batch = collate_packed(features, self.pad_id, self.offset, self.max_seqlen, max_rows, length)
            computed = batch["packed_ids"].size(1)
        else:
            batch = collate(features, self.pad_id, self.speed.pad_multiple)
            computed = batch["attention_mask"].numel()
        if self.pin:
            batch = {k: v.pin_memory() for k, v in batch.items()}
        return batch, real, computed

    def step_batches(self, features: list[list[dict]], max_rows: int,
                     loss_terms: Optional[float] = None) -> list[MicroBatch]:
        """One optimizer step's micro batches from the stream's micro batches (split by the token budget).

        Each gets the weight that makes the step's loss the mean over all its loss terms (data.loss_terms:
        labelled tokens, or one per example), not the mean of micro-batch means: its share of
        `loss_terms`, this process's part of the step's terms (default: the sum over `features`)."""
        from .data import feature_length, loss_terms as terms_of

        parts = [part for feats in features for part in self.micro_batches(feats)]
        counts = [sum(terms_of(f) for f in part) for part in parts]
        total = max(loss_terms if loss_terms is not None else sum(counts), 1e-12)
        out = []
        for part, count in zip(parts, counts):
            batch, real, computed = self.collate(part, max_rows)
            out.append(MicroBatch(batch, len(part), sum(feature_length(f) for f in part), real, computed,
                                  count / total))
        return out

    def prewarm(self, batch: dict[str, torch.Tensor]) -> None:
        """Pay this batch shape's one-time costs now, outside any timed or optimizer step: CUDA graph
        capture, compilation, or for eager code the cuDNN attention plans and cuBLAS heuristics of a new
        shape (the encoder's forward and backward once). Leaves the gradients untouched; a shape seen
        before costs nothing."""
        key = tuple((k, tuple(v.shape)) for k, v in sorted(batch.items()))
        if key in self.warmed:
            return
        self.warmed.add(key)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.graphs is not None:
            self.graphs.ensure(batch["packed_ids"], batch["packed_pos"], batch["cu_seqlens"])
        else:
            with autocast(self.device, self.bf16):
                if self.unpadded:
                    out = PackedEncoder(self.encoder, self.max_seqlen).encode(
                        batch["packed_ids"], batch["packed_pos"], batch["cu_seqlens"])
                else:
                    ids, mask = batch["input_ids"], batch["attention_mask"]
                    out = self.encoder(input_ids=ids.view(-1, ids.size(-1)),
                                       attention_mask=mask.view(-1, mask.size(-1))).last_hidden_state
            small = [p for p in self.encoder.parameters() if p.requires_grad and p.dim() < 2]
            torch.autograd.grad(out.float().sum(), small, allow_unused=True)

    def reserve(self, largest: dict[int, int]) -> None:
        """Capture, before any real batch, the largest bucket of each micro-batch layout: `largest` maps
        max rows (one per task) to the most real tokens one micro batch will hold (train.largest_micro_batches).
        The CUDA graphs share one memory pool, and the caching allocator reuses a freed block for a smaller
        request but never for a larger one: captured in the order batches arrive, each bigger bucket added
        fresh blocks (reserved memory reached ~2x the allocated peak on an H200); largest first, the later
        captures fit in what the first one left."""
        if self.graphs is None:
            return
        from .data import bucket_length, collate_packed

        n = self.max_seqlen
        for rows, tokens in sorted(largest.items(), key=lambda item: -bucket_length(item[1], self.speed.buckets,
                                                                                  self.steps)):
            pieces = [min(n, tokens - start) for start in range(0, tokens, n)]
            filler = [{"input_ids": [self.pad_id + 2] * k} for k in pieces]  # any non-pad token
            self.prewarm(collate_packed(filler, self.pad_id, self.offset, n, rows,
                                        bucket_length(tokens, self.speed.buckets, self.steps)))

    # Model hooks ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def evaluation(self):
        """Evaluation runs eagerly on padded, length-sorted batches: no per-length recompiles."""
        before = _set_compiled(self.compiled, [None] * len(self.compiled))
        try:
            yield
        finally:
            _set_compiled(self.compiled, before)

    def close(self) -> None:
        _set_compiled(self.compiled, [None] * len(self.compiled))
        if self.unpadded:
            self.model.packed_encoder = None
            self.encoder.set_attn_implementation(self.previous_attention)
        if self.graphs is not None:
            self.graphs.close()
        self.graphs = None


def prepare(model: Any, speed: Optional[SpeedConfig], device: torch.device, bf16: bool, pad_id: int,
            max_seqlen: int) -> SpeedPlan:
    """Apply the speed options to a MultiTaskModel (already on `device`); see the module docstring."""
    return SpeedPlan(model, speed or SpeedConfig(), device, bf16, pad_id, max_seqlen)
