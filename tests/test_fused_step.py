"""The GPU step's shortcuts compute what the plain step computes (checked on CPU, where the same kernels
exist): clipping inside fused AdamW, and word-embedding and linear-layer gradients added straight into
`.grad`, eagerly and under torch.compile."""
import pytest
import torch

from conftest import no_dropout
from stilts_xling.into_grad import _linears, embedding_into_grad, linear_into_grad
from stilts_xling.train import clip_in_step


def _model_and_grads(scale: float):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x = torch.randn(8, 6)
    (model(x).pow(2).sum() * scale).backward()
    return model


@pytest.mark.parametrize("scale", [1e-3, 50.0])  # below the max norm (no clipping) and far above it
def test_clip_inside_fused_adamw_matches_clip_grad_norm(scale):
    plain, fused = _model_and_grads(scale), _model_and_grads(scale)
    norm = torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=0.1, weight_decay=0.01, foreach=False)
    opt_plain.step()
    opt_fused = torch.optim.AdamW(fused.parameters(), lr=0.1, weight_decay=0.01, fused=True)
    assert clip_in_step(opt_fused, 1.0)
    assert float(opt_fused.grad_scale) == pytest.approx(max(1.0, (float(norm) + 1e-6) / 1.0), rel=1e-6)
    opt_fused.step()
    for a, b in zip(plain.parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (scale > 1) == (float(norm) > 1.0)


def test_clip_in_step_declines_unfused_optimizers():
    model = _model_and_grads(50.0)
    before = [p.grad.clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, foreach=False)
    assert not clip_in_step(opt, 1.0)
    assert getattr(opt, "grad_scale", None) is None
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 4, padding_idx=1)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, ids):
        return self.emb(ids)


def test_embedding_gradients_added_into_grad_match_autograd():
    torch.manual_seed(0)
    ids = torch.tensor([[3, 1, 3, 7], [1, 1, 10, 3]])  # repeats and padding ids
    weight = torch.randn(2, 4, 4)
    ref, fast = _Encoder(), _Encoder()
    fast.load_state_dict(ref.state_dict())
    (ref(ids) * weight).sum().backward()
    fast.emb.weight.grad = torch.full_like(fast.emb.weight, 0.5)  # accumulates onto what is there
    with embedding_into_grad(fast) as active:
        out = fast(ids)
    assert active and "forward" not in vars(fast.emb)  # the class's forward is back
    (out * weight).sum().backward()
    torch.testing.assert_close(fast.emb.weight.grad, ref.emb.weight.grad + 0.5)
    assert torch.all(fast.emb.weight.grad[1] == 0.5)  # padding row untouched


def _tiny_encoder():
    from transformers import AutoModel

    from stilts_xling import bench

    torch.manual_seed(0)
    return no_dropout(AutoModel.from_config(bench._config(tiny=True), add_pooling_layer=False))


def _backward(encoder, ids, weights, amp: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = encoder(input_ids=ids).last_hidden_state
    (out.float() * weights).sum().backward()


@pytest.mark.parametrize("amp,compiled", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["fp32", "bf16-autocast", "fp32-compiled", "bf16-compiled"])
def test_linear_weight_gradients_accumulated_into_grad_match_autograd(amp, compiled):
    """Two micro batches accumulate; every linear weight's gradient arrives through the fused path (none
    through autograd), biases and the rest through autograd as usual."""
    ref, fast = _tiny_encoder(), _tiny_encoder()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(3, 1000, (2, 9), generator=gen), torch.randn(2, 9, 32, generator=gen)) for _ in range(2)]
    for ids, weights in batches:
        _backward(ref, ids, weights, amp)
    with linear_into_grad(fast, torch.bfloat16 if amp and compiled else None) as layers:
        assert len(layers) == 2 * 6  # q, k, v, attention output, intermediate, output per layer
        assert all(float(m.weight.grad.abs().sum()) == 0 for m in layers)  # created as zeros
        if compiled:
            for layer in fast.encoder.layer:
                layer.compile()
        for ids, weights in batches:
            _backward(fast, ids, weights, amp)
    assert all("forward" not in vars(m) for m in layers)  # the class's forward is back
    for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
        # bf16: the fused bias sums stay fp32 where autograd rounds them to bf16 (~0.4%, relative to the
        # tensor's largest entry); the weights' products are the same bf16 GEMMs here on the CPU.
        tol = dict(rtol=0, atol=1e-2 * float(a.grad.abs().max())) if amp else dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.grad, a.grad, **tol, msg=name)


def test_zero_output_gradient_leaves_fused_gradients_unchanged_and_shared_layers_are_skipped():
    """The CUDA-graph warm-up runs backward with a zero output gradient: it must not move any `.grad`."""
    encoder = _tiny_encoder()
    ids = torch.randint(3, 1000, (2, 7))
    with linear_into_grad(encoder) as layers:
        for m in layers:
            m.weight.grad.fill_(0.25)
        out = encoder(input_ids=ids).last_hidden_state
        small = [p for p in encoder.parameters() if p.dim() < 2]
        torch.autograd.grad(out, small, torch.zeros_like(out), allow_unused=True)
        assert all(torch.all(m.weight.grad == 0.25) for m in layers)
    shared = torch.nn.Linear(4, 4)
    model = torch.nn.ModuleDict({"a": shared, "b": shared, "c": torch.nn.Linear(4, 4)})  # ALBERT-style sharing
    assert _linears(model) == [model["c"]]
