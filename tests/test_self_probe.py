"""The self-target probe of bench/self_probe.py on a few digits steps: drift is 0 exactly when the teacher
composes the self targets, and positive once the EMAs have moved."""

import math

import pytest
from bench.self_probe import self_target_probe

import scfm
from scfm.data.batches import DigitsBatches
from scfm.models.builtin import load_shipped_teacher
from scfm.train.presets import digits_config


@pytest.mark.parametrize("self_targets", ["ema", "teacher"])
def test_probe_measures_how_far_the_self_targets_moved(self_targets):
    config = digits_config(
        max_steps=4, batch_size=32, validate_every=2, calibrate=False, self_targets=self_targets, lr=1e-2
    )
    records: list[dict] = []
    scfm.distill(
        load_shipped_teacher("digits"),
        DigitsBatches(32, seed=0),
        config,
        progress=False,
        on_validate=self_target_probe(records, rows=32),
    )
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert all(math.isfinite(r[k]) and r[k] >= 0 for k in ("drift", "loss_self", "loss_frozen"))
    if self_targets == "teacher":  # the run's own targets are the frozen ones
        assert all(r["drift"] == 0 and r["loss_self"] == r["loss_frozen"] for r in records)
    else:
        assert records[-1]["drift"] > 0 and records[-1]["loss_self"] != records[-1]["loss_frozen"]
