import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "tests" / "assets"
SMOKE = REPO / "configs" / "smoke.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def shared_data() -> Path:
    """../shared/data beside the checkout (CI has it), or $STILTS_SHARED_DATA."""
    env = os.environ.get("STILTS_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture
def shared() -> Path:
    path = shared_data()
    if not path.is_dir():
        pytest.skip(f"real data samples not present at {path}")
    return path


def run_cli(*args: str):
    """Run `stilts ARGS` in-process; returns the click Result (exit_code, output)."""
    from typer.testing import CliRunner

    from stilts_xling.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cli():
    return run_cli


def no_dropout(model):
    """Dropout off in every layer, so that two paths compute the same function."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def sigterm_in_training_forward(monkeypatch, n: int) -> None:
    """This process sends itself SIGTERM in the n-th training forward of a classification head, so that a
    run stops (checkpoint, exit code 3) at an exact step; monkeypatch.undo() ends it."""
    import signal

    from stilts_xling.tasks.classification import ClassificationFamily

    real, calls = ClassificationFamily.forward, []

    def forward(self, head, hidden, pooled, batch):
        if head.training:
            calls.append(1)
            if len(calls) == n:
                signal.raise_signal(signal.SIGTERM)
        return real(self, head, hidden, pooled, batch)

    monkeypatch.setattr(ClassificationFamily, "forward", forward)
