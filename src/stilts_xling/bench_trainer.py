"""The baseline of `stilts bench`: the plain Hugging Face Trainer with its defaults, on the same synthetic
features and hyperparameters as stilts's own runs (bench.py), padded the way the HF example scripts pad."""
from __future__ import annotations

import tempfile
import time
from typing import Optional

import torch

from .bench import _fresh, _hp, _peak_gb, _rates, _sync
from .bench_data import Shape, _config, _rows


class _PadCollator:
    """The plain Trainer's batches: padded to a fixed width (run_glue, run_qa) or to the batch's longest."""

    def __init__(self, width: Optional[int]):
        self.width, self.computed, self.rows = width, 0, 0

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        rows = [r for item in items for r in _rows(item)]
        width = self.width or max(map(len, rows))
        ids = torch.full((len(rows), width), 1, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        batch = {"input_ids": ids, "attention_mask": (ids != 1).long()}
        if len(rows) != len(items):
            batch = {k: v.view(len(items), -1, width) for k, v in batch.items()}
        for key in ("labels", "start_positions", "end_positions"):
            if key in items[0]:
                batch[key] = torch.tensor([item[key] for item in items])
        self.computed += ids.numel()
        self.rows += len(items)
        return batch


def run_trainer(shape: Shape, features: list[dict], batch_size: int, steps: int, warmup: int,
                device: torch.device, tiny: bool, lr: float, seed: int) -> dict:
    """The baseline: transformers.Trainer with its defaults and the same hyperparameters."""
    from transformers import (AutoModelForMultipleChoice, AutoModelForQuestionAnswering,
                              AutoModelForSequenceClassification, PrinterCallback, Trainer, TrainerCallback,
                              TrainingArguments)

    class Clock(TrainerCallback):
        start = end = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup and self.start is None:
                _sync(device)
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # before the end-of-training bookkeeping
            if state.global_step == warmup + steps:
                _sync(device)
                self.end = time.perf_counter()

    _fresh(device)
    built = time.perf_counter()
    torch.manual_seed(seed)
    cls = {"classification": AutoModelForSequenceClassification, "span": AutoModelForQuestionAnswering,
           "choice": AutoModelForMultipleChoice}[shape.kind]
    extra = {"num_labels": shape.labels} if shape.kind == "classification" else {}
    with torch.device(device):
        model = cls.from_config(_config(tiny, **extra))
    hp = _hp(lr, batch_size, shape.max_length)
    items = [{k: v for k, v in f.items() if k != "example_index"} for f in features[:(warmup + steps) * batch_size]]
    collator = _PadCollator(shape.trainer_width)
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=warmup + steps, learning_rate=hp.lr,
            weight_decay=hp.weight_decay, warmup_steps=hp.warmup, max_grad_norm=hp.max_grad_norm,
            adam_epsilon=1e-8, bf16=device.type == "cuda", use_cpu=device.type != "cuda", seed=seed,
            report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=items, data_collator=collator, callbacks=[clock])
        trainer.remove_callback(PrinterCallback)  # keeps stdout to the table and the JSON
        out = trainer.train()
    elapsed = clock.end - clock.start
    samples = steps * batch_size
    real_per_sample = sum(len(r) for item in items for r in _rows(item)) / len(items)
    result = {"padding": f"max_length {shape.trainer_width}" if shape.trainer_width else "longest in batch",
              "optim": str(args.optim), **_rates(samples, round(samples * real_per_sample),
                                                   round(samples * collator.computed / max(1, collator.rows)),
                                                   elapsed, steps),
              "loss": float(out.training_loss), **_peak_gb(device), "setup_s": clock.start - built}
    del trainer, model
    return result
