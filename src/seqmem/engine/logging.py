"""Live logging to the field's dashboards: TensorBoard and Weights & Biases (offline by
default), as optional extras (`pip install 'seqmem[logging]'`).

A run asks for them with `train.log: [tensorboard, wandb]` (continual runs: `log: [...]`).
The engine's process writes them, beside the store, from the same events that the run's
metrics.jsonl records: one point per epoch (training runs: loss, accuracy, scaled accuracy,
evaluation loss or MSE, learning rate, mean tau, tokens/s) or per experience (continual
runs: loss and mean accuracy over the experiences so far), so train, continual and sweep runs
log the same way on every backend. Files go to the run's folder: `<run>/tensorboard/` and
`<run>/wandb/` (`WANDB_MODE=online` in the environment syncs to a server instead).
"""

from __future__ import annotations

import os
from pathlib import Path

EPOCH_SCALARS = ("loss", "acc_mean", "acc_scaled", "eval_loss", "mse", "eval_mse", "lr",
                 "tau_mean", "train_tokens_per_s")


def loggers_of(cfg) -> list[str]:
    """The loggers a job's config asks for (train.log for runs, log for continual runs)."""
    train = getattr(cfg, "train", None)
    return list(getattr(train, "log", None) or getattr(cfg, "log", None) or [])


class RunLog:
    """The open loggers of one run."""

    def __init__(self, names: list[str], run_dir: str | Path, run_id: str, config: dict):
        self.tb = self.wb = None
        run_dir = Path(run_dir)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "wandb" in names:
            import wandb

            self.wb = wandb.init(project=os.environ.get("WANDB_PROJECT", "seqmem"),
                                 name=run_id, id=run_id, resume="allow", config=config,
                                 dir=str(run_dir), mode=os.environ.get("WANDB_MODE", "offline"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wb is not None:
            self.wb.log(values, step=step)

    def event(self, ev: dict) -> None:
        """Log what an event holds: an epoch's record, or a continual experience."""
        if ev["event"] == "epoch":
            rec = ev["record"]
            self.scalars({k: float(rec[k]) for k in EPOCH_SCALARS
                          if isinstance(rec.get(k), int | float)}, int(rec["epoch"]))
        elif ev["event"] == "experience":
            seen = ev["acc"][: ev["experience"] + 1]
            self.scalars({"loss": float(ev["loss"]),
                          "acc_seen_mean": sum(seen) / len(seen)}, int(ev["experience"]) + 1)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()
