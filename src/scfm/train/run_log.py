"""Where training records go: a jsonl file always, plus tensorboard or wandb."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from scfm.train.config import DistillConfig


class RunLogger:
    """Writes each record to ``output_dir/metrics.jsonl`` and to the configured logger."""

    def __init__(self, config: DistillConfig) -> None:
        self.dir = Path(config.output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
        self._tb = self._wandb = None
        if config.logger == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "logger=tensorboard but the tensorboard package is missing (pip install tensorboard); "
                    "logging to metrics.jsonl only",
                    stacklevel=2,
                )
        elif config.logger == "wandb":
            try:
                import wandb
            except ImportError as err:
                raise ValueError(
                    "logger=wandb but wandb is not installed: pip install wandb, or set logger=tensorboard"
                ) from err
            self._wandb = wandb.init(
                project=config.extra.get("wandb_project", "scfm"), config=config.to_dict(), dir=str(self.dir)
            )

    def log(self, record: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        step = int(record["step"])
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
