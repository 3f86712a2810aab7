"""A fast and a slow exponential moving average of a list of tensors (the LoRA tensors)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

EMA_STARTS = ("params", "zeros")
"""Where both EMAs start: the initial ``params`` (a fresh LoRA: B = 0, a zero delta, the teacher), or
all zeros (A and B: the official scripts' start)."""


class FastSlowEMA:
    """``e <- mu * e + (1 - mu) * theta`` for a fast and a slow copy, in fp32.

    Both start equal to ``params`` (for a fresh LoRA: a zero delta, i.e. the teacher) or, with
    ``start="zeros"``, at zero.
    ``names`` label the tensors in :meth:`state_dict`.
    """

    def __init__(
        self,
        names: Sequence[str],
        params: Sequence[torch.Tensor],
        fast_decay: float = 0.99,
        slow_decay: float = 0.999,
        start: str = "params",
    ) -> None:
        for field, value in (("fast_decay", fast_decay), ("slow_decay", slow_decay)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{field}={value} must lie in [0, 1)")
        if start not in EMA_STARTS:
            raise ValueError(f"ema_init={start!r} must be one of {EMA_STARTS}")
        self.names = list(names)
        self.fast_decay, self.slow_decay = fast_decay, slow_decay
        self.fast = [p.detach().float().clone() for p in params]
        self.slow = [p.detach().float().clone() for p in params]
        if start == "zeros":
            torch._foreach_zero_(self.fast)
            torch._foreach_zero_(self.slow)

    @torch.no_grad()
    def update(self, params: Sequence[torch.Tensor]) -> None:
        """One EMA step towards ``params`` for both copies (``torch._foreach_lerp_``), on the EMAs' device
        (the CPU after :meth:`to` ``("cpu")``: the parameters are copied there first)."""
        current = [p.detach().to(e.device).float() for p, e in zip(params, self.fast)]  # blocking: the CPU reads it
        torch._foreach_lerp_(self.fast, current, 1.0 - self.fast_decay)
        torch._foreach_lerp_(self.slow, current, 1.0 - self.slow_decay)

    @torch.no_grad()
    def reset_to(self, params: Sequence[torch.Tensor]) -> None:
        """Set both EMAs to ``params`` (an EMA restart)."""
        torch._foreach_copy_(self.fast, [p.detach().float() for p in params])
        torch._foreach_copy_(self.slow, [p.detach().float() for p in params])

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"fast.{n}": t for n, t in zip(self.names, self.fast)}
        out.update({f"slow.{n}": t for n, t in zip(self.names, self.slow)})
        return out

    def copy(self, which: str) -> dict[str, torch.Tensor]:
        """The ``"fast"`` or ``"slow"`` EMA as {name: tensor}."""
        return dict(zip(self.names, getattr(self, which)))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            missing = sorted(expected - set(state))[:3]
            raise ValueError(
                f"EMA state does not match the LoRA: missing {missing}; was it saved from the same model and lora spec?"
            )
        torch._foreach_copy_(self.fast, [state[f"fast.{n}"] for n in self.names])
        torch._foreach_copy_(self.slow, [state[f"slow.{n}"] for n in self.names])

    def to(self, device: torch.device | str, pin_memory: bool = False) -> FastSlowEMA:
        """Move both copies to ``device``; ``pin_memory`` (CPU only) page-locks them so the copies in and out of
        a GPU run asynchronously (``offload_ema``)."""
        self.fast = [t.to(device) for t in self.fast]
        self.slow = [t.to(device) for t in self.slow]
        if pin_memory and torch.device(device).type == "cpu":
            self.fast = [t.pin_memory() for t in self.fast]
            self.slow = [t.pin_memory() for t in self.slow]
        return self
