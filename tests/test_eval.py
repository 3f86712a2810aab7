import numpy as np
import pytest
import torch
from safetensors import safe_open

from scfm.data.digits import load_digits_split
from scfm.eval.features import default_asset_path, load_digits_classifier, train_digits_classifier
from scfm.eval.metrics import (
    EVAL_SAMPLES,
    DigitsEvaluator,
    class_accuracy,
    frechet_distance,
    sliced_wasserstein,
)
from scfm.eval.plots import (
    plot_quality_vs_steps,
    save_comparison_grid,
    save_image_grid,
    save_scatter_2d,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluator():
    return DigitsEvaluator()


def _with_exact_moments(z: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Affinely map samples so their sample mean is `mean` and sample covariance diag(std^2)."""
    z = z - z.mean(axis=0)
    chol = np.linalg.cholesky(np.cov(z, rowvar=False))
    return (z @ np.linalg.inv(chol).T) * std + mean


def test_frechet_distance_of_identical_gaussians_is_zero():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    m1, s1 = rng.normal(size=5), rng.uniform(0.5, 2.0, size=5)
    m2, s2 = rng.normal(size=5), rng.uniform(0.5, 2.0, size=5)
    a = _with_exact_moments(rng.normal(size=(400, 5)), m1, s1)
    b = _with_exact_moments(rng.normal(size=(300, 5)), m2, s2)
    closed = np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(a, b, eps=0.0) == pytest.approx(closed, rel=1e-9, abs=1e-9)


def test_sliced_wasserstein_of_shifted_1d_cloud_is_the_shift():
    a = torch.randn(300, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert sliced_wasserstein(a, a + 0.7) == pytest.approx(0.7, rel=1e-12)


def test_sliced_wasserstein_of_shifted_2d_cloud_is_shift_over_sqrt_dim():
    a = torch.randn(400, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.tensor([0.6, -0.8], dtype=torch.float64)  # |shift| = 1
    sw = sliced_wasserstein(a, a + shift, n_projections=4096)
    assert sw == pytest.approx(1.0 / np.sqrt(2.0), rel=0.03)


def test_sliced_wasserstein_handles_unequal_sizes_via_quantiles():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 2, generator=g), torch.randn(1500, 2, generator=g)
    assert sliced_wasserstein(a, b) < 0.1
    assert sliced_wasserstein(a, b + 3.0) == pytest.approx(3.0, rel=0.1)


def test_class_accuracy_accepts_logits_or_predictions():
    labels = torch.tensor([0, 1, 2, 3])
    assert class_accuracy(torch.tensor([0, 1, 2, 0]), labels) == 0.75
    assert class_accuracy(torch.eye(4) * 5.0, labels) == 1.0


def test_shipped_classifier_heldout_accuracy_at_least_97_percent():
    model = load_digits_classifier()
    held = load_digits_split("heldout")
    with torch.no_grad():
        acc = class_accuracy(model(held.images), held.labels)
    assert acc >= 0.97
    with safe_open(str(default_asset_path()), "pt") as f:
        meta = f.metadata()
    assert float(meta["heldout_accuracy"]) == pytest.approx(acc, abs=1e-6) and "seed" in meta


def test_loaded_classifier_is_frozen_in_eval_mode_with_64_features():
    model = load_digits_classifier()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.features(torch.zeros(3, 1, 8, 8)).shape == (3, 64)


def test_train_digits_classifier_is_deterministic_given_seed_and_spares_global_rng():
    state = torch.get_rng_state()
    m1, _ = train_digits_classifier(seed=5, epochs=1)
    m2, _ = train_digits_classifier(seed=5, epochs=1)
    assert torch.equal(state, torch.get_rng_state())
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_fd_floor_is_small_and_noise_is_large(evaluator):
    noise = torch.rand(EVAL_SAMPLES, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    floor = evaluator.fd_floor()
    assert 0.0 < floor < 5.0
    assert evaluator.evaluate(noise).fd > 50 * floor


def test_evaluate_reports_class_accuracy_only_with_labels(evaluator):
    held = load_digits_split("heldout")
    assert evaluator.evaluate(held.images).class_acc is None
    assert evaluator.evaluate(held.images, held.labels).class_acc >= 0.97


def test_evaluate_rejects_wrong_shape_and_nan_images(evaluator):
    with pytest.raises(ValueError, match="images.shape"):
        evaluator.evaluate(torch.zeros(10, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        evaluator.evaluate(torch.full((10, 1, 8, 8), float("nan")))


def test_plots_write_valid_png_files(tmp_path):
    imgs = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rows = [
        {"model": m, "solver": "euler", "steps": s, "nfe": s, "fd": f, "class_acc": 0.9}
        for m, fs in (("teacher", (40.0, 12.0, 3.0)), ("student", (6.0, 4.0, 3.5)))
        for s, f in zip((1, 2, 4), fs)
    ]
    labelled = [("teacher euler 2", imgs[:6]), ("student euler 2", imgs[6:])]
    clouds = [("data", torch.zeros(200, 2)), ("model", torch.ones(200, 2))]
    paths = [
        save_image_grid(imgs, tmp_path / "grid.png", nrow=5),
        save_comparison_grid(labelled, tmp_path / "cmp.png"),
        plot_quality_vs_steps(rows, tmp_path / "q.png", floor=2.5),
        save_scatter_2d(clouds, tmp_path / "s.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cmp.png", "grid.png", "q.png", "s.png"]


def test_evaluator_with_the_heldout_reference_scores_the_heldout_digits_near_zero_and_train_above():
    heldout = load_digits_split("heldout").images
    against_heldout = DigitsEvaluator(reference="heldout")
    assert against_heldout.evaluate(heldout).fd < 1e-6
    assert DigitsEvaluator().evaluate(heldout).fd > 1.0  # the train reference: the FD floor
    with pytest.raises(ValueError, match="reference='test' must be 'train' or 'heldout'"):
        DigitsEvaluator(reference="test")
