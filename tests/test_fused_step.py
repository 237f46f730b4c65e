"""The GPU step's shortcuts compute what the plain step computes (checked on CPU, where the same kernels
exist): clipping inside fused AdamW, and word-embedding gradients added straight into `.grad`."""
import pytest
import torch

from stilts_xling.packing import embedding_into_grad
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
