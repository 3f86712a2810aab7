"""Where training records go: a jsonl file always, plus tensorboard or wandb (scalars and images)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from scfm.train.config import DistillConfig


class RunLogger:
    """Writes each record to ``output_dir/metrics.jsonl`` and to the configured logger; images to
    tensorboard / wandb only (:meth:`log_image`)."""

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

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """Log one image [3, H, W] float in [0, 1] under ``tag`` at ``step`` (tensorboard ``add_image``,
        wandb ``Image``); jsonl records get nothing (the image files are written by the caller)."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"log_image expects one image [3, H, W], got shape {tuple(image.shape)}")
        image = image.detach().float().clamp(0, 1).cpu()
        if self._tb is not None:
            self._tb.add_image(tag, image, step)
        if self._wandb is not None:
            import wandb

            pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            self._wandb.log({tag: wandb.Image(pixels)}, step=step)

    def log_png(self, tag: str, path: str | Path, step: int) -> None:
        """Log the PNG file ``path`` (e.g. a validation grid written by matplotlib) as :meth:`log_image` does."""
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        self.log_image(tag, torch.from_numpy(pixels).permute(2, 0, 1), step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
