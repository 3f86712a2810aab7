"""True classifier-free guidance shared by the adapters of CFG models (SD3/SD3.5, Wan).

The spec's form and scale (SCFM_SPEC.md, Guidance)::

    v = v_c + w * (v_c - v_neg)        (w = guidance_scale)

which equals a diffusers pipeline's ``v_neg + s * (v_c - v_neg)`` with ``s = w + 1``. An
adapter computes ``v_c`` and ``v_neg`` in ONE transformer call on the doubled batch
``[x, x]`` with ``[positive, negative]`` conditioning and combines the halves with
:func:`combine_cfg`.

``cfg_mode`` and what the distillation loop needs (targets are always guided):

- ``"runtime"`` (official): every call is guided, so teacher, EMA and student velocities are
  all guided; CFG stays at inference (2 passes a step, in one doubled call).
- ``"baked"``: the teacher's velocities in the targets are guided, but the student prediction
  runs inside :meth:`TrueCFG.student_pass` (= ``guided(False)``), so the student learns the
  guided velocity from the positive prompt alone: one pass a step at inference. The fast and
  slow EMAs are copies of the student and run the same way (unguided): guiding them again would
  apply CFG twice to the self targets (sd3-digits, w 0.5, 700 steps: 4-step FD 6.8 with the
  EMAs guided, against the teacher's 7.8 at 4 steps and 2.6 at 32).
- ``"none"``: never guided (negative cond keys are then ignored).

:class:`TrueCFG` is a mixin for a :class:`scfm.models.adapters.VelocityAdapter` subclass
(list it first: ``class MyAdapter(TrueCFG, VelocityAdapter)``, so its ``student_pass`` wins).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, ClassVar

import torch

CFG_MODES = ("runtime", "baked", "none")
"""Accepted ``cfg_mode`` values."""


def check_cfg_mode(cfg_mode: str) -> str:
    """Return ``cfg_mode`` or raise ``ValueError`` naming the accepted values."""
    if cfg_mode not in CFG_MODES:
        raise ValueError(f"cfg_mode={cfg_mode!r} must be one of {CFG_MODES}")
    return cfg_mode


def combine_cfg(doubled: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """[2B, ...] = ``[v_c; v_neg]`` (positive rows first) -> ``v_c + w (v_c - v_neg)`` [B, ...]."""
    if doubled.shape[0] % 2:
        raise ValueError(f"combine_cfg needs an even batch [v_c; v_neg], got {doubled.shape[0]} rows")
    v_c, v_neg = doubled.chunk(2)
    return v_c + guidance_scale * (v_c - v_neg)


class TrueCFG:
    """Mixin: ``guidance_scale`` w, ``cfg_mode``, the :meth:`guided` switch and :meth:`student_pass`.

    Call :meth:`_init_cfg` from ``__init__`` (after ``nn.Module.__init__``).
    """

    true_cfg: ClassVar[bool] = True
    guidance_scale: float
    cfg_mode: str
    _guidance_on: bool

    @classmethod
    def guidance_kwargs(cls, cfg_scale: float, cfg_mode: str) -> dict[str, Any]:
        """The constructor's ``guidance_scale`` (w) and ``cfg_mode`` from a run's ``cfg_scale`` / ``cfg_mode``."""
        return {"guidance_scale": cfg_scale, "cfg_mode": cfg_mode}

    def _init_cfg(self, guidance_scale: float, cfg_mode: str) -> None:
        self.guidance_scale = float(guidance_scale)
        self.cfg_mode = check_cfg_mode(cfg_mode)
        self._guidance_on = True

    @property
    def cfg_active(self) -> bool:
        """Whether a call right now returns the guided velocity."""
        return self.cfg_mode != "none" and self._guidance_on

    @contextmanager
    def guided(self, enabled: bool) -> Iterator[None]:
        """Turn CFG on or off for the calls inside the block (``cfg_mode="none"`` stays off);
        the previous state is restored on exit, also on an exception."""
        saved = self._guidance_on
        self._guidance_on = bool(enabled)
        try:
            yield
        finally:
            self._guidance_on = saved

    def student_pass(self) -> AbstractContextManager:
        """Baked CFG: the student prediction is unguided (it learns the guided target in one pass)."""
        return self.guided(False) if self.cfg_mode == "baked" else nullcontext()

    def _require_negative(self, cond: Mapping[str, Any], keys: Sequence[str]) -> None:
        """Raise ``ValueError`` when guidance is on and a negative cond key is missing."""
        missing = [k for k in keys if k not in cond]
        if missing:
            raise ValueError(
                f"{type(self).__name__} with cfg_mode={self.cfg_mode!r} needs cond {missing} "
                "(encode the negative prompt, by default '', with the pipeline's encode_prompt; one row broadcasts), "
                "or build the adapter with cfg_mode='none'"
            )
