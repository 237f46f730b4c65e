"""Unpadded (packed) training gives the padded path's losses and gradients; batching covers every example once."""
import random

import pytest
import torch

from conftest import SMOKE, no_dropout
from stilts_xling.data import (bucket_length, collate, collate_packed, split_by_tokens, token_budget_batches)
from stilts_xling.speed import SpeedConfig, prepare

PAD = 1


def _features(n, seed=0, choices=0, lo=3, hi=40, vocab=1000):
    rng = random.Random(seed)

    def row():
        return [0] + [rng.randrange(3, vocab) for _ in range(rng.randrange(lo, hi))] + [2]

    out = []
    for i in range(n):
        if choices:
            out.append({"input_ids": [row() for _ in range(choices)], "labels": rng.randrange(choices),
                        "example_index": i})
        else:
            ids = row()
            start = rng.randrange(1, len(ids) - 1)
            out.append({"input_ids": ids, "labels": rng.randrange(3), "start_positions": start,
                        "end_positions": min(len(ids) - 2, start + 2), "example_index": i})
    return out


def _model(kind):
    """Tiny random XLM-R (2 layers, hidden 32) + a head of the given kind, float32 on CPU."""
    from stilts_xling import bench
    from stilts_xling.model import MultiTaskModel
    from transformers import AutoModel

    torch.manual_seed(0)
    encoder = AutoModel.from_config(bench._config(tiny=True), add_pooling_layer=False)
    shape = {"classification": bench.SHAPES["mnli"], "span": bench.SHAPES["squad"],
             "choice": bench.SHAPES["hellaswag"]}[kind]
    spec = bench._spec(shape)
    return MultiTaskModel(encoder, [spec]), spec.name


def _loss_and_grads(model, task, batch):
    model.zero_grad(set_to_none=True)
    loss, logits = model(task, batch)
    loss.backward()
    return loss.detach(), logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                            if p.grad is not None}


@pytest.mark.parametrize("kind,choices", [("classification", 0), ("span", 0), ("choice", 4)])
def test_packed_and_padded_give_the_same_loss_and_gradients(kind, choices):
    model, task = _model(kind)
    model.eval()  # no dropout: both paths must then compute the same function
    feats = _features(9, seed=1, choices=choices)
    padded = _loss_and_grads(model, task, collate(feats, PAD))
    plan = prepare(model, SpeedConfig(unpadded=True), torch.device("cpu"), False, PAD, 64)
    assert plan.unpadded and model.encoder.config._attn_implementation == "stilts_varlen"
    batch, real, computed = plan.collate(feats, len(feats) * max(1, choices))
    assert "cu_seqlens" in batch and computed >= real
    packed = _loss_and_grads(model, task, batch)
    plan.close()
    assert model.encoder.config._attn_implementation == "sdpa" and model.packed_encoder is None

    assert torch.allclose(padded[0], packed[0], rtol=1e-5, atol=1e-6)
    mask = collate(feats, PAD)["attention_mask"].bool()
    if kind == "span":  # token logits: compare where there are tokens
        assert torch.allclose(padded[1][mask], packed[1][mask], atol=1e-5)
    else:
        assert torch.allclose(padded[1], packed[1], atol=1e-5)
    assert padded[2].keys() == packed[2].keys()
    scale = max(g.abs().max().item() for g in padded[2].values())
    for name, grad in padded[2].items():
        # float32 sums in another order; mathematically zero ones (key biases) are ~1e-12 noise both sides.
        assert torch.allclose(grad, packed[2][name], rtol=1e-3, atol=1e-4 * scale), name


def test_wider_padding_multiple_changes_shapes_not_results():
    model, task = _model("classification")
    model.eval()
    feats = _features(7, seed=3, lo=5, hi=20)  # longest row 21 tokens
    plans = [prepare(model, SpeedConfig(pad_multiple=m), torch.device("cpu"), False, PAD, 64) for m in (8, 32)]
    (narrow, _, computed8), (wide, _, computed32) = (plan.collate(feats, len(feats)) for plan in plans)
    assert narrow["input_ids"].shape[1] == 24 and wide["input_ids"].shape[1] == 32
    assert computed32 == 7 * 32 and computed8 == 7 * 24
    a, b = _loss_and_grads(model, task, narrow), _loss_and_grads(model, task, wide)
    assert torch.allclose(a[0], b[0], rtol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)


def test_collate_packed_layout_xlmr_positions_start_at_padding_idx_plus_one():
    feats = [{"input_ids": [0, 11, 12, 2], "labels": 0}, {"input_ids": [0, 13, 2], "labels": 1}]
    batch = collate_packed(feats, PAD, position_offset=PAD + 1, max_seqlen=64, max_rows=4, length=16)
    assert batch["packed_ids"].tolist() == [[0, 11, 12, 2, 0, 13, 2] + [PAD] * 9]
    assert batch["packed_pos"].tolist() == [[2, 3, 4, 5, 2, 3, 4] + [PAD] * 9]  # filler at the pad position
    cu = batch["cu_seqlens"]
    # K = max_rows + ceil(T / max_seqlen) + 1 = 6: 2 rows, 1 filler piece, then empty rows.
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 4, 7, 16, 16, 16]
    assert batch["unpack_index"].tolist() == [[0, 1, 2, 3, 0, 0, 0, 0], [4, 5, 6, 0, 0, 0, 0, 0]]
    assert batch["input_ids"].shape == (2, 8) and batch["labels"].tolist() == [0, 1]
    # The same positions HF derives for a padded row of XLM-R.
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaEmbeddings

    padded = XLMRobertaEmbeddings.create_position_ids_from_input_ids(batch["input_ids"], PAD)
    assert padded[batch["attention_mask"].bool()].tolist() == batch["packed_pos"][0, :7].tolist()
    with pytest.raises(ValueError, match="max_seqlen"):
        collate_packed([{"input_ids": list(range(3, 80))}], PAD, 2, max_seqlen=64)


def test_token_budget_and_buckets_cover_every_example_exactly_once():
    rng = random.Random(0)
    lengths = [max(3, min(128, int(rng.lognormvariate(3.7, 0.5)))) for _ in range(2000)] + [300]
    for packed in (False, True):
        for shuffle in (False, True):
            batches = token_budget_batches(lengths, 2048, shuffle=shuffle, seed=3, packed=packed)
            assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
            for b in batches:
                cost = sum(lengths[i] for i in b) if packed else len(b) * max(lengths[i] for i in b)
                assert cost <= 2048 or len(b) == 1
    feats = _features(64, seed=2, hi=120)
    for packed in (False, True):
        parts = split_by_tokens(feats, 700, packed=packed)
        assert sorted(f["example_index"] for p in parts for f in p) == list(range(64))
    for n in [1, 7, 63, 64, 65, 1000, 1472, 5000, 16200, 17000]:
        b = bucket_length(n)
        assert b >= n and b % 64 == 0 and (n < 1024 or b <= n * 1.07)
        assert bucket_length(n, steps=8) >= n
    assert bucket_length(1500, [1024, 2048]) == 2048
    assert len({bucket_length(n) for n in range(1200, 1800)}) <= 12  # 64-token steps here
    assert len({bucket_length(n, steps=8) for n in range(1200, 1800)}) <= 6  # with compile


def test_training_stream_with_a_token_budget_sees_each_example_once_per_epoch():
    from stilts_xling.speed import loss_weights
    from stilts_xling.train import _Stream, step_batches

    model, task = _model("classification")
    feats = _features(96, seed=4, hi=90)
    for i, f in enumerate(feats):
        f["labels"] = i  # to see which examples each batch holds
    plan = prepare(model, SpeedConfig(unpadded=True, token_budget=400, cuda_graphs=True, workers=2),
                   torch.device("cpu"), False, PAD, 128)
    assert plan.graphs is None and plan.keep_grads is None  # CUDA graphs need CUDA: clean fallback
    stream = _Stream(feats, 16, seed=0)
    seen = []
    for _, micro_batches in step_batches(plan, [task] * 6, {task: stream}, {task: 1}, {task: 16}, workers=2):
        weights = loss_weights(micro_batches)
        assert abs(sum(weights) - 1) < 1e-9
        for m in micro_batches:
            assert m.real_tokens <= 400 or m.examples == 1
            seen += m.batch["labels"].tolist()
    assert sorted(seen) == list(range(96))  # 6 steps x 16 = one epoch
    plan.close()


def _smoke_tasks(max_train=None):
    from stilts_xling.config import load_config, merge_train
    from stilts_xling.data import load_examples
    from stilts_xling.model import load_tokenizer, tokenizer_source
    from stilts_xling.tasks.registry import family_of, get_task
    from stilts_xling.train import TaskData

    cfg = load_config(SMOKE)
    tokenizer = load_tokenizer(tokenizer_source(cfg.model))
    spec = get_task("mnli")
    hp = merge_train(spec.train, cfg.intermediate.train)
    hp.max_steps, hp.eval_every = 60, 30
    train_ex = load_examples(spec, "train", "en", cfg)[:max_train]
    dev_ex = load_examples(spec, "dev", "en", cfg)[:64]
    featurize = family_of(spec).featurize
    task = TaskData(spec, hp, featurize(spec, train_ex, tokenizer, hp.max_length), dev_ex,
                    featurize(spec, dev_ex, tokenizer, hp.max_length))
    return cfg, tokenizer, spec, hp, task


def _train(speed, dropout):
    from accelerate import Accelerator
    from stilts_xling.model import MultiTaskModel, load_encoder
    from stilts_xling.train import train

    cfg, tokenizer, spec, hp, task = _smoke_tasks()
    torch.manual_seed(cfg.seed)
    model = MultiTaskModel(load_encoder(cfg.model.name, cfg.model, tokenizer), [spec])
    if not dropout:
        no_dropout(model)
    result = train(model, [task], hp, cfg.intermediate.sampler, Accelerator(cpu=True), tokenizer.pad_token_id,
                   cfg.seed, cfg.bf16, desc="test", speed=speed)
    assert model.packed_encoder is None and model.encoder.config._attn_implementation == "sdpa"
    return result


def _losses(result):
    return [(h["step"], h["loss/mnli"]) for h in result.history if "loss/mnli" in h]


@pytest.mark.parametrize("budget", [None, 300])
def test_smoke_training_unpadded_matches_padded(budget):
    """Without dropout the packed, background-collated run is the padded run up to float rounding: the
    same losses at every logged step and the same dev accuracy (token budget or not)."""
    padded = _train(SpeedConfig(token_budget=budget), dropout=False)
    fast = _train(SpeedConfig(unpadded=True, token_budget=budget, workers=1), dropout=False)
    assert [s for s, _ in _losses(padded)] == [s for s, _ in _losses(fast)] == [20, 40, 60]
    for (_, a), (_, b) in zip(_losses(padded), _losses(fast)):
        assert a == pytest.approx(b, rel=1e-3)
    assert padded.dev_metrics["mnli"]["accuracy"] > 50  # learnt something (chance: 33)
    assert padded.dev_metrics["mnli"]["accuracy"] == pytest.approx(fast.dev_metrics["mnli"]["accuracy"], abs=2.0)


def test_token_budget_micro_batches_give_the_whole_batch_gradient():
    model, task = _model("classification")
    model.eval()
    feats = _features(16, seed=5, hi=90)
    whole = _loss_and_grads(model, task, collate(feats, PAD))
    plan = prepare(model, SpeedConfig(unpadded=True, token_budget=300), torch.device("cpu"), False, PAD, 128)
    parts = plan.step_batches([feats], 16)
    assert len(parts) > 2 and sum(m.examples for m in parts) == 16
    model.zero_grad(set_to_none=True)
    for m in parts:
        loss, _ = model(task, m.batch)
        (loss * m.weight).backward()
    plan.close()
    scale = max(g.abs().max().item() for g in whole[2].values())
    for name, p in model.named_parameters():
        assert torch.allclose(whole[2][name], p.grad, rtol=1e-3, atol=1e-4 * scale), name


def test_smoke_training_with_dropout_agrees_with_padded():
    """With dropout the random masks fall differently; the metrics still agree."""
    padded = _train(SpeedConfig(), dropout=True)
    fast = _train(SpeedConfig(unpadded=True, workers=1), dropout=True)
    assert abs(padded.best_score - fast.best_score) <= 15.0


def test_unsupported_model_falls_back_to_padded(caplog):
    model, task = _model("classification")
    model.encoder.config.model_type = "deberta-v2"  # no packing support declared for it
    plan = prepare(model, SpeedConfig(unpadded=True), torch.device("cpu"), False, PAD, 64)
    assert not plan.unpadded and model.packed_encoder is None
    assert "packing is not supported" in caplog.text
    batch, _, _ = plan.collate(_features(3), 3)
    assert "cu_seqlens" not in batch


def test_packed_rows_on_cpu_use_padded_sdpa_whatever_kernel_is_asked_for():
    from stilts_xling.packing import select_attention

    assert select_attention(torch.device("cpu"), "cudnn") is None
    model, _ = _model("classification")
    for attention in ("flash", "cudnn"):
        plan = prepare(model, SpeedConfig(unpadded=True, attention=attention), torch.device("cpu"), False, PAD, 64)
        assert plan.unpadded and plan.attention == "padded SDPA per sequence"
        plan.close()
    assert prepare(model, SpeedConfig(), torch.device("cpu"), False, PAD, 64).attention is None


def test_cudnn_attention_without_packed_rows_is_a_config_error():
    from stilts_xling.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"speed\.attention: cudnn needs speed\.unpadded: true"):
        load_config(SMOKE, ["speed.attention=cudnn", "speed.unpadded=false"])
    with pytest.raises(ConfigError, match=r"speed\.attention: 'triton' is not one of 'flash', 'cudnn'"):
        load_config(SMOKE, ["speed.attention=triton"])


# Stand-ins for a varlen kernel ([T, H, D] q, k, v, cu_seqlens, max_len, dropout, scale), to show that the
# self-test catches each way a real one could go wrong. The reference: per sequence, plain autograd, its
# dropout mask drawn once and kept by autograd for the backward.
def _reference_varlen(q, k, v, cu, max_len, dropout, scale, mask_seed=None):
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (x[a:b].float().transpose(0, 1) for x in (q, k, v))
        probs = torch.softmax(qs @ ks.transpose(1, 2) * scale, dim=-1)
        if dropout:
            gen = torch.Generator().manual_seed(mask_seed) if mask_seed is not None else None
            keep = torch.rand(probs.shape, generator=gen) >= dropout
            probs = probs * keep / (1 - dropout)
        outs.append((probs @ vs).transpose(0, 1))
    return torch.cat(outs).to(q.dtype)


class _FreshMaskInBackward(torch.autograd.Function):
    """Drops with one mask forward and recomputes the backward with another: the bug the self-test's
    dropout identity is there for."""

    @staticmethod
    def forward(ctx, q, k, v, cu, max_len, dropout, scale):
        ctx.save_for_backward(q, k, v, cu)
        ctx.args = (max_len, dropout, scale)
        return _reference_varlen(q, k, v, cu, max_len, dropout, scale, mask_seed=1)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, cu = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [x.detach().requires_grad_() for x in (q, k, v)]
            out = _reference_varlen(*inputs, cu, *ctx.args, mask_seed=2)
        return (*torch.autograd.grad(out, inputs, grad), None, None, None, None)


@pytest.mark.parametrize("kernel,problem", [
    (_reference_varlen, None),
    (lambda q, k, v, cu, n, p, s: _reference_varlen(q, k, v, cu, n, p, 1.3 * s), "output differs"),
    (lambda q, k, v, cu, n, p, s: _reference_varlen(q, k, v, cu, n, 0.0, s), "dropout 0.5 left the output unchanged"),
    (_FreshMaskInBackward.apply, "the backward's mask is not the forward's"),
    (lambda q, k, v, cu, n, p, s: _reference_varlen(q, k.detach() + 0 * k, v, cu, n, p, s), "dk differs"),
], ids=["correct", "wrong-scale", "ignores-dropout", "other-mask-in-backward", "no-key-gradient"])
def test_varlen_self_test_passes_a_correct_kernel_and_names_each_fault(kernel, problem):
    from stilts_xling.packing import self_test

    found = self_test(kernel, "cpu")
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_graph_buckets_share_one_output_buffer_grown_only_for_a_larger_bucket():
    """_Graphs._shared on a stand-in (the class itself needs CUDA): buckets no larger than the first share its
    memory; a larger one gets a new buffer, and the views handed out before keep theirs."""
    from types import SimpleNamespace

    from stilts_xling.packing import _Graphs

    graphs = SimpleNamespace(buffers={}, anchor=torch.zeros(()))
    shared = _Graphs._shared.__get__(graphs)
    largest = shared("out", torch.Size([1, 64, 8]), torch.float32)
    smaller = shared("out", torch.Size([1, 16, 8]), torch.float32)
    other = shared("grad_out", torch.Size([1, 16, 8]), torch.float32)
    assert smaller.data_ptr() == largest.data_ptr() and smaller.shape == (1, 16, 8)
    assert other.data_ptr() != largest.data_ptr()
    larger = shared("out", torch.Size([1, 80, 8]), torch.float32)
    assert larger.data_ptr() != largest.data_ptr() and larger.shape == (1, 80, 8)
    largest.fill_(1.0)
    assert float(larger.sum()) == 0.0 and float(smaller.sum()) == 16 * 8  # the old views keep the old buffer


def test_compiled_layers_trace_the_flash_varlen_kernel_whole_forward_and_backward():
    """On meta tensors (the aten flash ops have meta kernels): one graph, no break, gradients for q, k, v, so
    `speed.compile` fuses around attention. cuDNN's op has no meta kernel; its wrapper is compiler-disabled."""
    from stilts_xling.packing import KERNELS

    q, k, v = (torch.randn(40, 4, 64, device="meta", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 10, 40], dtype=torch.int32, device="meta")

    def layer(q, k, v, cu):
        return KERNELS["flash"](q * 2, k, v, cu, 64, 0.1, 0.125).float().sum()

    torch.compile(layer, backend="aot_eager", fullgraph=True)(q, k, v, cu).backward()
    assert all(x.grad is not None and x.grad.shape == x.shape for x in (q, k, v))


# ---------------------------------------------------------------------------------------------------
# CUDA: the varlen kernels and CUDA graphs (run by scripts/gpu_bench.sh on a lent GPU).

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("attention", ["flash", "cudnn"])
def test_varlen_kernel_agrees_with_sdpa_on_cuda(attention):
    from stilts_xling.packing import KERNELS, select_attention, self_test

    assert self_test(KERNELS[attention], "cuda") is None
    assert select_attention(torch.device("cuda"), attention) == attention


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("attention", ["flash", "cudnn"])
@pytest.mark.parametrize("kind,choices", [("classification", 0), ("choice", 4)])
def test_packed_bf16_on_cuda_matches_padded(kind, choices, attention):
    model, task = _model(kind)
    model = model.cuda().eval()
    feats = _features(9, seed=1, choices=choices)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        padded = _loss_and_grads(model, task, {k: v.cuda() for k, v in collate(feats, PAD).items()})
        plan = prepare(model, SpeedConfig(unpadded=True, attention=attention), torch.device("cuda"), True, PAD, 64)
        assert plan.unpadded and plan.attention == f"{attention} varlen"
        batch, _, _ = plan.collate(feats, len(feats) * max(1, choices))
        packed = _loss_and_grads(model, task, {k: v.cuda() for k, v in batch.items()})
    plan.close()
    assert torch.allclose(padded[0], packed[0], rtol=2e-2, atol=2e-2)
    scale = max(g.abs().max().item() for g in padded[2].values())
    for name, grad in padded[2].items():
        assert (grad - packed[2][name]).abs().max().item() <= 5e-2 * scale, name


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("compile_layers,fused_wgrad,attention",
                         [(False, False, "flash"), (True, False, "flash"), (False, True, "flash"), (True, True, "flash"),
                          (False, False, "cudnn"), (True, True, "cudnn")],
                         ids=["eager-layers", "compiled-layers", "eager-layers-fused-wgrad", "compiled-layers-fused-wgrad",
                              "eager-layers-cudnn", "compiled-layers-fused-wgrad-cudnn"])
def test_cuda_graph_gradients_equal_eager_gradients(compile_layers, fused_wgrad, attention):
    """Gradients replayed from CUDA graphs (dropout off) equal the eager packed ones, accumulate over two
    micro batches of different buckets, and replay identically; replacing .grad tensors is refused. With
    fused_wgrad the linear layers' weight gradients come from the GEMM's own fp32 accumulation; with cuDNN's
    attention, compiled layers break around it (it has no fake kernel to trace)."""
    from stilts_xling.config import TrainConfig, merge_train
    from stilts_xling.speed import MicroBatch
    from stilts_xling.train import _linear_schedule, _optimizer, train_step

    parts = [_features(8, seed=10), _features(8, seed=20, lo=30, hi=60)]  # two buckets: 256 and 448

    def grads(graphs):
        model, task = _model("classification")
        model = no_dropout(model.cuda().train())
        plan = prepare(model, SpeedConfig(unpadded=True, cuda_graphs=graphs, compile=compile_layers and graphs,
                                          fused_wgrad=fused_wgrad and graphs, attention=attention),
                       torch.device("cuda"), True, PAD, 64)
        assert plan.attention == f"{attention} varlen"
        assert bool(plan.graphs and plan.graphs.fused_linears) == (fused_wgrad and graphs)
        assert (plan.graphs is not None) == graphs and (plan.keep_grads is None) == (not graphs)
        out = []
        for _ in range(2):
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.zero_()
            for part in parts:
                batch, _, _ = plan.collate(part, 8)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss, _ = model(task, {k: v.cuda() for k, v in batch.items()})
                (loss / 2).backward()
            out.append({n: p.grad.float().cpu().clone() for n, p in model.named_parameters() if p.grad is not None})
        if graphs:
            assert len(plan.graphs.entries) == 2
            model.zero_grad(set_to_none=True)
            batch, _, _ = plan.collate(parts[0], 8)
            with pytest.raises(RuntimeError, match="set_to_none=False"):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss, _ = model(task, {k: v.cuda() for k, v in batch.items()})
                loss.backward()
            # Whole optimizer steps through train.py's step function.
            opt = _optimizer(model, merge_train(TrainConfig(lr=1e-4)), fused=True)
            sched = _linear_schedule(opt, 0, 10)
            for p in model.parameters():
                p.grad = torch.zeros_like(p) if p.grad is None else p.grad
            plan.graphs.entries.clear()  # the .grad tensors are new: capture again
            losses = []
            for part in parts:
                batch, real, computed = plan.collate(part, 8)
                losses += train_step(model, task, [MicroBatch(batch, 8, real, real, computed)], opt, sched, None,
                                     1.0, torch.device("cuda"), True, plan.keep_grads)
            assert all(torch.isfinite(x) for x in losses)
        plan.close()
        return out

    eager, graphed = grads(False), grads(True)
    assert eager[0].keys() == graphed[0].keys()
    scale = max(g.abs().max().item() for g in eager[0].values())
    tol = (3e-2 if compile_layers else 1e-2 if fused_wgrad else 1e-3) * scale  # fused: no bf16 rounding of dW
    for name in eager[0]:
        assert (graphed[0][name] - graphed[1][name]).abs().max().item() <= 1e-3 * scale, name  # replays agree
        assert (eager[0][name] - graphed[0][name]).abs().max().item() <= tol, name



@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("speed", [
    SpeedConfig(unpadded=True),
    SpeedConfig(unpadded=True, cuda_graphs=True),
    SpeedConfig(unpadded=True, cuda_graphs=True, flat_adamw=True, fused_wgrad=True, lazy_embedding=True),
], ids=["unpadded", "graphs", "graphs+flat+wgrad+lazy"])
def test_training_steps_never_wait_for_the_gpu(speed):
    """Once a batch shape is warm, a whole optimizer step (forward, backward, clipping, AdamW, schedule, zeroing)
    makes no synchronizing CUDA call: torch.cuda.set_sync_debug_mode("error") raises at the first one."""
    from stilts_xling.config import TrainConfig, merge_train
    from stilts_xling.speed import MicroBatch
    from stilts_xling.train import _linear_schedule, _optimizer, train_step

    model, task = _model("classification")
    model = model.cuda().train()
    opt = _optimizer(model, merge_train(TrainConfig(lr=1e-4)), fused=True, flat=speed.flat_adamw,
                     lazy=speed.lazy_embedding)
    sched = _linear_schedule(opt, 2, 10)
    plan = prepare(model, speed, torch.device("cuda"), True, PAD, 64)
    steps = []
    for seed in range(5):  # one bucket: the same number of packed tokens each step
        batch, real, computed = plan.collate(_features(8, seed=seed, lo=20, hi=21), 8)
        steps.append([MicroBatch(batch, 8, real, real, computed)])

    def step(micro):
        return train_step(model, task, micro, opt, sched, None, 1.0, torch.device("cuda"), True, plan.keep_grads)

    losses = [step(m) for m in steps[:2]]  # capture, compilation, lazy rows' one-time gradient check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses += [step(m) for m in steps[2:]]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    plan.close()
    assert all(torch.isfinite(loss).all() for step_losses in losses for loss in step_losses)


@pytest.mark.gpu
@gpu
def test_later_bucket_warm_ups_reuse_the_graph_pool():
    """Capturing a smaller bucket after the largest one adds little reserved memory: its eager warm-up
    allocates from the graphs' pool, which the first capture left free, not a second copy of the
    activations beside it. The encoder is sized so that its activations dwarf its weights."""
    from stilts_xling import bench
    from stilts_xling.model import MultiTaskModel
    from transformers import AutoModel

    torch.manual_seed(0)
    config = bench._config(tiny=True, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                           num_attention_heads=4, max_position_embeddings=130)
    model = MultiTaskModel(AutoModel.from_config(config, add_pooling_layer=False), [bench._spec(bench.SHAPES["mnli"])])
    model = no_dropout(model.cuda().train())
    plan = prepare(model, SpeedConfig(unpadded=True, cuda_graphs=True), torch.device("cuda"), True, PAD, 128)

    def capture(rows, length):
        feats = [{"input_ids": [0] + [5] * (length - 2) + [2], "labels": 0} for _ in range(rows)]
        batch, _, _ = plan.collate(feats, rows)
        before = torch.cuda.memory_reserved()
        plan.prewarm(batch)
        return torch.cuda.max_memory_reserved() - before

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    first = capture(128, 128)  # 16k tokens: hundreds of MB of activations
    torch.cuda.reset_peak_memory_stats()
    second = capture(128, 96)  # three quarters of the first
    plan.close()
    assert first > 200 * 2 ** 20, first
    assert second < 0.25 * first, (first, second)


@pytest.mark.slow
def test_compiled_layers_give_the_eager_gradients_and_compile_twice_at_most():
    """Regional torch.compile over packed rows of changing length: eager's loss and gradients, and no
    compilation after the second length (automatic dynamic shapes)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, task = _model("classification")
    model.eval()
    plan = prepare(model, SpeedConfig(unpadded=True), torch.device("cpu"), False, PAD, 128)
    batches = [plan.collate(_features(n, seed=n, hi=100), 32)[0] for n in (9, 14, 5, 20)]
    eager = [_loss_and_grads(model, task, b) for b in batches]
    plan.close()
    plan = prepare(model, SpeedConfig(unpadded=True, compile=True), torch.device("cpu"), False, PAD, 128)
    assert len(plan.compiled) == 2  # the two encoder layers
    for b, ref in zip(batches, eager):
        loss, _, grads = _loss_and_grads(model, task, b)
        assert torch.allclose(loss, ref[0], rtol=1e-5)
        scale = max(g.abs().max().item() for g in ref[2].values())
        for name, g in ref[2].items():
            assert torch.allclose(g, grads[name], rtol=1e-3, atol=1e-4 * scale), name
    assert counters["stats"]["unique_graphs"] <= 2
    with plan.evaluation():
        assert all(layer._compiled_call_impl is None for layer in plan.compiled)
    plan.close()
    assert all(layer._compiled_call_impl is None for layer in plan.compiled)
    torch._dynamo.reset()


def test_token_level_loss_is_the_mean_over_the_whole_step_however_it_is_split():
    """MLM (token-level, like tagging): a step of 8 lines gives the same gradient as one micro batch or two
    of 4 whose masked-token counts differ (each weighted by its share of the step's tokens, not 1/2)."""
    from pathlib import Path

    from stilts_xling.config import ExperimentConfig, ModelConfig
    from stilts_xling.data import load_examples, loss_terms
    from stilts_xling.model import MultiTaskModel, TINY_TOKENIZER, load_encoder, load_tokenizer
    from stilts_xling.tasks.registry import family_of, get_task

    tok = load_tokenizer(str(TINY_TOKENIZER))
    spec = get_task("mlm")
    cfg = ExperimentConfig(data_dir=str(Path(__file__).parent / "assets"))
    feats = family_of(spec).featurize(spec, load_examples(spec, "train", "en", cfg)[:8], tok, 64)[:8]
    halves = [feats[:4], feats[4:]]
    assert sum(map(loss_terms, halves[0])) != sum(map(loss_terms, halves[1]))
    torch.manual_seed(0)
    model = MultiTaskModel(load_encoder("tiny:xlm-roberta", ModelConfig(name="tiny:xlm-roberta"), tok), [spec]).eval()
    plan = prepare(model, SpeedConfig(), torch.device("cpu"), False, tok.pad_token_id, 64)

    def grads(parts):
        model.zero_grad(set_to_none=True)
        micro = plan.step_batches(parts, 8)
        assert sum(m.weight for m in micro) == pytest.approx(1.0)
        for m in micro:
            loss, _ = model(spec.name, m.batch)
            (loss * m.weight).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, split = grads([feats]), grads(halves)
    for name, g in whole.items():
        torch.testing.assert_close(split[name], g, rtol=1e-5, atol=1e-7)
    plan.close()


def test_graph_memory_is_reserved_with_the_largest_bucket_first():
    """SpeedPlan.reserve captures, before any real batch, exactly the bucket (packed length, cu_seqlens
    length) of the run's largest micro batch, found by train.largest_micro_batches from fresh streams."""
    from stilts_xling.train import _Stream, largest_micro_batches

    class Recorder:  # stands in for the CUDA graphs: records the shapes it is asked to capture
        def __init__(self):
            self.keys = []

        def ensure(self, ids, pos, cu):
            self.keys.append((ids.size(1), cu.size(0)))

    model, task = _model("classification")
    feats = _features(200, seed=3, hi=120)
    for budget in (None, 500):
        plan = prepare(model, SpeedConfig(unpadded=True, token_budget=budget), torch.device("cpu"), False, PAD, 128)
        plan.graphs, plan.bucketed = Recorder(), True
        largest = largest_micro_batches(plan, [task] * 12, {task: _Stream(feats, 16, seed=1)}, {task: 1}, {task: 16})
        plan.reserve(largest)
        assert len(plan.graphs.keys) == 1
        stream = _Stream(feats, 16, seed=1)
        real = [(m.batch["packed_ids"].size(1), m.batch["cu_seqlens"].size(0))
                for _ in range(12) for m in plan.step_batches([stream.next()], 16)]
        assert plan.graphs.keys[0] == max(real), budget  # the same shape as the largest real batch
        assert len(set(real)) > 3  # several buckets, so the order mattered
        plan.graphs = None
        plan.close()
