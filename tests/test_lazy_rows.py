"""speed.lazy_embedding: word-embedding rows stepped when looked up (lazy_rows.py) end where dense AdamW puts
them, moments and checkpoints included. The Triton kernels run here under Triton's CPU interpreter."""
import pytest
import torch

from conftest import REPO, run_cli, sigterm_in_training_forward
from stilts_xling.flat_adamw import FlatAdamW
from stilts_xling.train import clip_in_step, up_to_date, zero_grad
from test_flat_adamw import HAS_TRITON, _intermediate_metrics, in_triton_interpreter

ROWS, WIDTH = 40, 24


def _model(device="cpu"):
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"emb": torch.nn.Embedding(ROWS, WIDTH, padding_idx=1),
                                "head": torch.nn.Linear(WIDTH, 3)}).to(device)


def _groups(model):
    return [{"params": [model["emb"].weight, model["head"].weight], "weight_decay": 0.1},
            {"params": [model["head"].bias], "weight_decay": 0.0}]


def _batches(device):
    """Steps of one or two micro batches over changing subsets of the rows: some rows are looked up every
    step, some now and then (so they miss several steps), rows 30-39 never; ids repeat within a batch."""
    gen = torch.Generator().manual_seed(1)
    for step in range(9):
        pool = torch.tensor([0, 1, 2] + list(range(3 + step % 4 * 5, 8 + step % 4 * 5)) + [20 + step % 3] * 2)
        yield [pool[torch.randint(len(pool), (3, 5), generator=gen)].to(device) for _ in range(1 + step % 2)]


def _train(model, optimizer, device, snapshots=()):
    """train_step's optimizer part per step (clipping bites in some steps), with a schedule; a forward
    without gradients between steps (evaluation) and flushes at `snapshots` must change nothing."""
    out = []
    for i, micro in enumerate(_batches(device)):
        for ids in micro:
            loss = model["head"](model["emb"](ids)).pow(2).mean() * 10.0 ** (i % 3 - 1) / len(micro)
            loss.backward()
        if not clip_in_step(optimizer, 1.0):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.grad_scale = None
        for group in optimizer.param_groups:
            group["lr"] *= 0.8
        zero_grad(optimizer, None)
        with torch.no_grad():
            model["emb"](torch.tensor([[4, 29]], device=device))
        if i in snapshots:
            up_to_date(optimizer)
            out.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return out


def compare_with_dense(kernel: str, device: str = "cpu", beta1: float = 0.9) -> None:
    """Against FlatAdamW without deferred rows, same kernels (test_flat_adamw shows that one is torch's AdamW):
    the two differ only in when a row takes its zero-gradient steps. beta1 = 0: the first moment is zero one
    step after a row's last gradient, so catching up switches from replaying steps to the closing multiply
    midway; otherwise only rows never looked up (and the padding row, whose gradient is always zero) take
    that multiply."""
    reference, lazy = _model(device), _model(device)
    dense_opt, flat_opt = (FlatAdamW(_groups(m), lr=1e-2, betas=(beta1, 0.999), eps=1e-4, kernel=kernel)
                           for m in (reference, lazy))
    flat_opt.defer_rows(lazy, lazy["emb"])
    assert (flat_opt.lazy.kernels is not None) == (kernel == "triton")
    want = _train(reference, dense_opt, device, snapshots=(3, 8))
    got = _train(lazy, flat_opt, device, snapshots=(3, 8))
    for i, (a, b) in enumerate(zip(want, got)):
        for name in a:
            # The closing multiply rounds once where the dense steps round at every step; through the forward
            # that reaches every gradient (eps 1e-4: an Adam step of a gradient near a tiny eps magnifies it).
            torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7, msg=f"snapshot {i}: {name}")
    # Before a flush, rows that were not looked up lag behind; the state dict brings them up to date.
    state, ref_state = flat_opt.state_dict()["state"], dense_opt.state_dict()["state"]
    for key, ref in ref_state.items():
        assert float(state[key]["step"]) == float(ref["step"]) == 9
        for moment in ("exp_avg", "exp_avg_sq"):
            scale = float(ref[moment].abs().max())
            torch.testing.assert_close(state[key][moment], ref[moment], rtol=1e-5, atol=1e-6 * scale)
    assert float(lazy["emb"].weight.grad.abs().sum()) == 0  # the step zeroed what it read
    untouched = lazy["emb"].weight[30:]
    assert not torch.equal(untouched, _model(device)["emb"].weight[30:])  # decayed, though never looked up


@pytest.mark.parametrize("beta1", [0.9, 0.0])
def test_lazy_rows_match_dense_steps_with_torch_kernels(beta1):
    compare_with_dense("torch", beta1=beta1)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_lazy_rows_triton_kernels_match_dense_steps_in_the_interpreter():
    in_triton_interpreter("import test_lazy_rows as t; t.compare_with_dense('triton'); "
                          "t.compare_with_dense('triton', beta1=0.0)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lazy_rows_match_dense_steps_on_cuda():
    compare_with_dense("triton" if HAS_TRITON else "torch", "cuda")


def test_tied_embeddings_are_refused_and_stray_gradients_stop_the_first_step():
    model = _model()
    model["out"] = torch.nn.Linear(WIDTH, ROWS, bias=False)
    model["out"].weight = model["emb"].weight  # an MLM head's tie
    with pytest.raises(ValueError, match="also used by out .*lazy_embedding: false"):
        FlatAdamW(_groups(model), lr=1e-2).defer_rows(model, model["emb"])

    model = _model()
    optimizer = FlatAdamW(_groups(model), lr=1e-2)
    optimizer.defer_rows(model, model["emb"])
    (model["head"](model["emb"](torch.tensor([[3, 4]]))).sum() + model["emb"].weight[9].sum()).backward()
    with pytest.raises(RuntimeError, match="1 word-embedding rows got a gradient without being looked up"):
        optimizer.step()


def test_training_with_lazy_embedding_rows_matches_dense_and_resumes(tmp_path, cli, monkeypatch):
    """Through the CLI (unpadded batches, flat AdamW): lazy rows give the dense run's metrics; a run stopped
    by SIGTERM resumes from its checkpoint, written with every row up to date, to the same metrics. With an
    MLM task (tied output embeddings) the option is refused."""
    config = REPO / "configs" / "smoke.yaml"
    over = ["model.dropout=0", "intermediate.train.max_steps=10", "intermediate.train.checkpoint_every=2",
            "intermediate.train.eval_every=5", "speed.unpadded=true", "speed.flat_adamw=true"]
    results = {}
    for name, extra in (("dense", []), ("lazy", ["speed.lazy_embedding=true"])):
        run_dir = tmp_path / name
        assert run_cli("train-intermediate", config, f"run_dir={run_dir}", *over, *extra).exit_code == 0
        results[name] = _intermediate_metrics(run_dir)
    assert results["lazy"].keys() == results["dense"].keys() and results["dense"]
    for key, value in results["dense"].items():
        assert results["lazy"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    from safetensors.torch import load_file

    dense, lazy = (load_file(tmp_path / n / "intermediate" / "encoder" / "model.safetensors") for n in ("dense", "lazy"))
    assert "embeddings.word_embeddings.weight" in dense
    for key, value in dense.items():
        torch.testing.assert_close(lazy[key], value, rtol=1e-5, atol=1e-6, msg=key)

    run_dir = tmp_path / "stopped"
    sigterm_in_training_forward(monkeypatch, 4)
    assert cli("train-intermediate", config, f"run_dir={run_dir}", *over, "speed.lazy_embedding=true").exit_code == 3
    monkeypatch.undo()
    assert cli("train-intermediate", config, f"run_dir={run_dir}", *over, "speed.lazy_embedding=true").exit_code == 0
    resumed = _intermediate_metrics(run_dir)
    for key, value in results["lazy"].items():
        assert resumed[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    mlm = run_cli("train-intermediate", REPO / "configs" / "smoke" / "mlm.yaml", f"run_dir={tmp_path / 'mlm'}",
                  "intermediate.train.max_steps=2", "speed.flat_adamw=true", "speed.lazy_embedding=true")
    assert mlm.exit_code != 0 and "tied" in mlm.output, mlm.output
