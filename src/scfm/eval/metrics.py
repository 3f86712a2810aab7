"""Sample-quality metrics: Fréchet distance, sliced Wasserstein, class accuracy, precision and recall.

Fréchet distance (FD) is computed in float64 from feature means and covariances, like FID,
but with the shipped digits classifier (:mod:`scfm.eval.features`) in place of Inception.
:class:`DigitsEvaluator` scores generated digits against the real "train" split.

FD is biased upward at small sample counts, so compare numbers only at the same count:
:data:`EVAL_SAMPLES` (1000, 100 per class) for generated samples, and read
:meth:`DigitsEvaluator.fd_floor` (real held-out images, 360 of them) as the noise floor,
the score a perfect generator would get at about that count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from scfm.data.digits import IMAGE_SHAPE, load_digits_split
from scfm.eval.features import DigitsClassifier, load_digits_classifier

EVAL_SAMPLES = 1000
"""Recommended number of generated digits per evaluation (100 per class)."""

ArrayLike = Tensor | np.ndarray


def _as_float64_2d(x: ArrayLike, name: str) -> np.ndarray:
    arr = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, Tensor) else np.asarray(x)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2:
        raise ValueError(f"{name}.shape={arr.shape} must be 2-D [num_samples, num_features]")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} has {arr.shape[0]} samples; a covariance needs at least 2")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf; check the model that produced it")
    return arr


def feature_stats(feats: ArrayLike, name: str = "feats") -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and unbiased covariance [F, F], float64, of features [N, F] (N >= 2)."""
    arr = _as_float64_2d(feats, name)
    return arr.mean(axis=0), np.atleast_2d(np.cov(arr, rowvar=False))


def frechet_distance_from_stats(
    mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray, eps: float = 1e-6
) -> float:
    """FD between N(mu_a, cov_a) and N(mu_b, cov_b), float64, ``eps * I`` added to both covs.

    ``|mu_a - mu_b|^2 + tr(A) + tr(B) - 2 tr((A B)^(1/2))`` with ``A = cov_a + eps I`` and
    ``B = cov_b + eps I``; the real part of the matrix square root is used.
    """
    if eps < 0:
        raise ValueError(f"eps={eps} must be >= 0 (it regularises the covariances)")
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(
            f"feature widths differ: mu_a {mu_a.shape}, mu_b {mu_b.shape}, "
            f"cov_a {cov_a.shape}, cov_b {cov_b.shape}; use the same feature extractor"
        )
    eye = np.eye(cov_a.shape[0], dtype=np.float64)
    a = cov_a.astype(np.float64) + eps * eye
    b = cov_b.astype(np.float64) + eps * eye
    covmean = np.real(scipy.linalg.sqrtm(a @ b))
    diff = mu_a.astype(np.float64) - mu_b.astype(np.float64)
    fd = float(diff @ diff + np.trace(a) + np.trace(b) - 2.0 * np.trace(covmean))
    return max(fd, 0.0)


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to features [N, F] and [M, F] (float64).

    Returns a float >= 0 (squared-distance units, like FID). ``eps`` is added to the
    diagonal of both covariances so that rank-deficient ones (N <= F) stay well defined.
    """
    mu_a, cov_a = feature_stats(feats_a, "feats_a")
    mu_b, cov_b = feature_stats(feats_b, "feats_b")
    return frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b, eps)


def _sorted_or_quantiles(proj: Tensor, grid: Tensor | None) -> Tensor:
    if grid is None:
        return proj.sort(dim=0).values
    return torch.quantile(proj, grid, dim=0)


def sliced_wasserstein(
    a: ArrayLike,
    b: ArrayLike,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced 2-Wasserstein distance between point clouds a [N, D] and b [M, D].

    ``sqrt(mean_k W2(theta_k . a, theta_k . b)^2)`` over ``n_projections`` random unit
    directions ``theta_k`` (drawn from ``generator``; ``None`` means a fresh generator
    seeded 0, so the result is deterministic). Each 1-D W2 is exact via sorting when
    N == M; otherwise both sides are compared at max(N, M) midpoint quantiles.
    A cloud shifted by ``s`` scores ``sqrt(mean_k (theta_k . s)^2)``, about ``|s| / sqrt(D)``.
    """
    ta = torch.as_tensor(a).detach().to("cpu", torch.float64)
    tb = torch.as_tensor(b).detach().to("cpu", torch.float64)
    if ta.ndim != 2 or tb.ndim != 2 or ta.shape[1] != tb.shape[1]:
        raise ValueError(f"a.shape={tuple(ta.shape)} and b.shape={tuple(tb.shape)} must be [N, D] and [M, D]")
    if ta.shape[0] == 0 or tb.shape[0] == 0:
        raise ValueError("a and b must each hold at least one point")
    if n_projections < 1:
        raise ValueError(f"n_projections={n_projections} must be >= 1")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    theta = torch.randn(ta.shape[1], n_projections, generator=gen, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    n, m = ta.shape[0], tb.shape[0]
    grid = None
    if n != m:
        k = max(n, m)
        grid = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    qa = _sorted_or_quantiles(ta @ theta, grid)
    qb = _sorted_or_quantiles(tb @ theta, grid)
    return float(((qa - qb) ** 2).mean().sqrt())


def class_accuracy(logits_or_preds: Tensor, labels: Tensor) -> float:
    """Fraction in [0, 1] of predictions equal to ``labels`` [N].

    ``logits_or_preds`` is either logits [N, C] (argmax taken) or predicted classes [N].
    """
    preds = logits_or_preds.argmax(dim=1) if logits_or_preds.ndim == 2 else logits_or_preds
    if preds.ndim != 1 or labels.ndim != 1 or preds.shape[0] != labels.shape[0]:
        raise ValueError(
            f"logits_or_preds.shape={tuple(logits_or_preds.shape)} does not match "
            f"labels.shape={tuple(labels.shape)}; pass [N, C] or [N] with labels [N]"
        )
    if labels.shape[0] == 0:
        raise ValueError("labels is empty; class accuracy needs at least one sample")
    return float((preds.to("cpu").long() == labels.to("cpu").long()).double().mean())


@dataclass(frozen=True)
class PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019), each in [0, 1].

    precision: fraction of generated samples inside the reference manifold (fidelity).
    recall: fraction of reference samples inside the generated manifold (variety).
    """

    precision: float
    recall: float


def _knn_radii(feats: Tensor, k: int) -> Tensor:
    """Distance [N] from each row of ``feats`` [N, F] to its k-th nearest other row."""
    dist = torch.cdist(feats, feats)
    return dist.kthvalue(k + 1, dim=1).values  # +1: the row itself at distance 0


def _coverage(points: Tensor, centres: Tensor, radii: Tensor) -> float:
    """Fraction of ``points`` [M, F] inside at least one ball (``centres`` [N, F], ``radii`` [N])."""
    inside = torch.cdist(points, centres) <= radii[None, :]
    return float(inside.any(dim=1).double().mean())


def precision_recall(reference: ArrayLike, generated: ArrayLike, k: int = 5) -> PrecisionRecall:
    """Improved precision and recall of ``generated`` [M, F] against ``reference`` [N, F] features.

    Each set's manifold is the union of balls around its samples with the radius to their ``k``-th
    nearest neighbour in the same set. Compare values only at equal sample counts and ``k``.
    """
    ref = torch.from_numpy(_as_float64_2d(reference, "reference"))
    gen = torch.from_numpy(_as_float64_2d(generated, "generated"))
    if ref.shape[1] != gen.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} features and generated {gen.shape[1]}; they must match")
    if not 1 <= k < min(ref.shape[0], gen.shape[0]):
        raise ValueError(f"k={k} must be in [1, {min(ref.shape[0], gen.shape[0]) - 1}] for these sample counts")
    return PrecisionRecall(
        precision=_coverage(gen, ref, _knn_radii(ref, k)),
        recall=_coverage(ref, gen, _knn_radii(gen, k)),
    )


def class_spread(feats: ArrayLike, labels: Tensor) -> float:
    """Mean over classes of the root-mean-square distance of features [N, F] to their class mean."""
    arr = torch.from_numpy(_as_float64_2d(feats, "feats"))
    labels = labels.to("cpu")
    if labels.ndim != 1 or labels.shape[0] != arr.shape[0]:
        raise ValueError(f"labels.shape={tuple(labels.shape)} must be [N] with N={arr.shape[0]}")
    spreads = []
    for c in labels.unique():
        rows = arr[labels == c]
        spreads.append((rows - rows.mean(dim=0)).square().sum(dim=1).mean().sqrt())
    return float(torch.stack(spreads).mean())


@dataclass(frozen=True)
class DigitsScores:
    """Scores of a batch of generated digits.

    fd: Fréchet distance to the real "train" features (>= 0, lower is better).
    class_acc: fraction the classifier assigns to the intended label, or None without labels.
    """

    fd: float
    class_acc: float | None


class DigitsEvaluator:
    """Scores generated 8x8 digits with the shipped classifier's features.

    Args:
        device: where the classifier runs; input images may live on any device.
        classifier: a feature model to use instead of the shipped one (tests, ablations).
        batch_size: images per forward pass.
        reference: the real digits FD is measured against: "train" (the reported numbers) or
            "heldout" (360 digits no model trains on: for choices such as calibration, so they
            are never made against the statistics the results are scored on).
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        classifier: DigitsClassifier | None = None,
        batch_size: int = 512,
        reference: str = "train",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if reference not in ("train", "heldout"):
            raise ValueError(f"reference={reference!r} must be 'train' or 'heldout'")
        self.model = classifier if classifier is not None else load_digits_classifier(device)
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.batch_size = batch_size
        self.reference = reference
        reference_feats, _ = self._features_and_logits(load_digits_split(reference).images)
        self.reference_mu, self.reference_cov = feature_stats(reference_feats, f"{reference} features")
        self._floor: float | None = None

    def _features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = [], []
        with torch.inference_mode():
            for start in range(0, images.shape[0], self.batch_size):
                x = images[start : start + self.batch_size].to(self.device, torch.float32)
                f = self.model.features(x)
                feats.append(f.to("cpu", torch.float64))
                logits.append(self.model.fc2(f).to("cpu"))
        return torch.cat(feats), torch.cat(logits)

    def features(self, images: Tensor) -> Tensor:
        """Classifier features [N, 64] float64 on the CPU for images [N, 1, 8, 8] in [-1, 1]."""
        self._check_images(images)
        return self._features_and_logits(images)[0]

    @staticmethod
    def _check_images(images: Tensor) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"images.shape={tuple(images.shape)} must be [N, 1, 8, 8] digits in [-1, 1]")
        if images.shape[0] < 2:
            raise ValueError(f"images holds {images.shape[0]} samples; FD needs at least 2")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or inf; the sampler diverged")

    def evaluate(self, images: Tensor, labels: Tensor | None = None, clamp: bool = True) -> DigitsScores:
        """Score generated images [N, 1, 8, 8] in [-1, 1] (any device).

        Args:
            images: generated digits; :data:`EVAL_SAMPLES` of them is the recommended count.
            labels: intended classes [N] for class-conditional samples, else None.
            clamp: clip images to [-1, 1] first, as saving them as pictures would.
        """
        self._check_images(images)
        if labels is not None and (labels.ndim != 1 or labels.shape[0] != images.shape[0]):
            raise ValueError(f"labels.shape={tuple(labels.shape)} must be [N] with N={images.shape[0]}")
        x = images.clamp(-1.0, 1.0) if clamp else images
        feats, logits = self._features_and_logits(x)
        mu, cov = feature_stats(feats, "generated features")
        fd = frechet_distance_from_stats(mu, cov, self.reference_mu, self.reference_cov)
        acc = class_accuracy(logits, labels) if labels is not None else None
        return DigitsScores(fd=fd, class_acc=acc)

    def fd_floor(self) -> float:
        """FD of the 360 real "heldout" images against the train statistics.

        This is the noise floor at that sample count: a perfect generator scored on about
        as many samples would land near it, so gaps to it, not to zero, measure quality.
        """
        if self._floor is None:
            self._floor = self.evaluate(load_digits_split("heldout").images).fd
        return self._floor
