"""Loading a distilled LoRA file into a diffusers pipeline, with every key checked."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

LORA_ADAPTER_NAME = "scfm"
"""The peft adapter name scfm loads LoRA files under."""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def load_lora(pipe: Any, path: str | os.PathLike, adapter_name: str = LORA_ADAPTER_NAME) -> list[str]:
    """``pipe.load_lora_weights(path)`` of a diffusers-format LoRA (``scfm export --format diffusers``).

    Raises ``ValueError`` when diffusers reports unexpected or missing LoRA keys (it only logs
    them) or when the transformer modules that received the adapter differ from the modules the
    file names. Returns the adapted module paths.
    """
    from diffusers.utils import logging as diffusers_logging
    from peft.tuners.lora import LoraLayer

    from scfm.fileio import load_safetensors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"LoRA file {str(path)!r} does not exist; write one with scfm export --format diffusers"
        )
    in_file = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in load_safetensors(path) if ".lora_" in k}
    logger = diffusers_logging.get_logger("diffusers")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
    finally:
        logger.removeHandler(handler)
    bad = [m for m in handler.messages if "unexpected keys" in m.lower() or "missing keys" in m.lower()]
    if bad:
        raise ValueError(f"{str(path)!r} does not fit this pipeline's transformer: {bad[0][:500]}")
    loaded = {n for n, m in pipe.transformer.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A}
    if loaded != in_file:
        raise ValueError(
            f"{str(path)!r}: the LoRA names {len(in_file)} transformer modules but {len(loaded)} received it "
            f"(not loaded: {sorted(in_file - loaded)[:3]}, unexpected: {sorted(loaded - in_file)[:3]}); "
            "is it a diffusers-format LoRA of this model?"
        )
    return sorted(loaded)
