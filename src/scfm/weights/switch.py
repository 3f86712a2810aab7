"""Run the one base model as teacher, fast EMA, slow EMA or student.

Only LoRA tensors differ between the four, so switching is a copy of LoRA tensors into
the live parameters (``torch._foreach_copy_``) or turning the LoRA delta off. Every switch
is a context manager that restores the previous weights bit for bit, also on an exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from scfm.weights.lora import lora_layers, set_lora_enabled


class WeightSwitch:
    """Swap LoRA tensors of ``model`` in and out; ``params`` are the live LoRA parameters."""

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)
        self.layers = lora_layers(model)
        self._stash = [torch.empty_like(p) for p in self.params]
        self._active = False

    @contextmanager
    def use(self, tensors: Sequence[torch.Tensor]) -> Iterator[None]:
        """Run with ``tensors`` (e.g. an EMA) as the LoRA; the student's tensors come back after."""
        if self._active:
            raise RuntimeError("WeightSwitch.use is not re-entrant: leave the current switch first")
        self._active = True
        with torch.no_grad():
            torch._foreach_copy_(self._stash, self.params)
            try:
                torch._foreach_copy_(self.params, list(tensors))  # a CPU copy (offload_ema) is copied in here
                yield
            finally:
                torch._foreach_copy_(self.params, self._stash)
                self._active = False

    @contextmanager
    def teacher(self) -> Iterator[None]:
        """Run with the LoRA delta off (the frozen base model); re-enabled on exit."""
        set_lora_enabled(self.layers, False)
        try:
            yield
        finally:
            set_lora_enabled(self.layers, True)
