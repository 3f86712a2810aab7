"""Improved precision / recall and the per-class spread on sets with known answers."""

import numpy as np
import pytest
import torch

from scfm.eval.metrics import class_spread, precision_recall


def test_identical_sets_have_full_precision_and_recall():
    x = np.random.default_rng(0).normal(size=(200, 4))
    pr = precision_recall(x, x.copy(), k=3)
    assert pr.precision == 1.0 and pr.recall == 1.0


def test_far_apart_sets_have_none():
    x = np.random.default_rng(0).normal(size=(100, 3))
    pr = precision_recall(x, x + 100.0, k=3)
    assert pr.precision == 0.0 and pr.recall == 0.0


def test_a_collapsed_generator_keeps_precision_and_loses_recall():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(500, 2))
    collapsed = 0.05 * rng.normal(size=(500, 2))  # every sample near the mode
    pr = precision_recall(ref, collapsed, k=5)
    assert pr.precision > 0.95 and pr.recall < 0.2


def test_the_known_fraction_inside_one_ball():
    # reference: a tight cluster at the origin with k-NN radius ~0; and 10 points 3 apart on a line
    ref = np.concatenate([np.zeros((6, 1)), 3.0 * np.arange(1, 11)[:, None]])
    gen = np.array([[0.0], [0.0], [50.0], [0.0], [0.0], [0.0]])  # 5 of 6 at the cluster
    assert precision_recall(ref, gen, k=2).precision == pytest.approx(5 / 6)


def test_bad_k_and_shapes_are_refused():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="k=5"):
        precision_recall(x, x, k=5)
    with pytest.raises(ValueError, match="features"):
        precision_recall(x, np.zeros((5, 3)), k=2)


def test_class_spread_is_the_mean_rms_distance_to_the_class_mean():
    feats = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [10.0, 14.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert class_spread(feats, labels) == pytest.approx((1.0 + 2.0) / 2)
