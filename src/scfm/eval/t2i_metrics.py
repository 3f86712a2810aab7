"""Text-to-image metrics via torchmetrics: CLIP score, and Fréchet distances (FID, dFID) of image sets.

Everything here works on images [B, 3, H, W] float in [0, 1] (and their prompts), whatever made them.

- **CLIP score** (``torchmetrics.multimodal.CLIPScore``): mean over samples of
  ``100 * cos(image embedding, prompt embedding)``, clamped at 0 (higher is better). The
  images are quantised to uint8 first, as saving them as PNGs would.
- **FID** (``torchmetrics.image.fid.FrechetInceptionDistance``): Fréchet distance between
  Gaussian fits of feature sets, with the real Inception-v3 (needs ``torch-fidelity``; weights
  from a local file or downloaded by torch-fidelity), the CLIP image embeddings (FD-CLIP), or
  any feature module ``images [B, 3, H, W] in [0, 1] -> [B, D]``.
- **dFID** (the paper's "abs dFID"): FID of student samples against the teacher's samples
  for the same prompts and seeds; :class:`FrechetScorer` keeps the teacher's features fixed.

FID needs at least 2 samples per side and is biased upward, strongly so while the sample
count n is below the feature width D (rank-deficient covariances): :func:`fid_warning` says so
when n < D, and numbers compare only at equal n and features.

Model weights (CLIP, Inception) come from a local folder/file or the Hugging Face hub; a
missing one raises an error that says how to provide it.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from scfm.fileio import load_safetensors

PathLike = str | os.PathLike

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
"""CLIP used for CLIP scores unless another is given (ViT-L/14, as torchmetrics' default)."""

INCEPTION_FEATURE_DIM = 2048
"""Width of the Inception-v3 pool features that FID uses."""

_CLIP_FIX = (
    "pass --clip PATH to a local folder written by save_pretrained() of openai/clip-vit-large-patch14 "
    "(model AND processor: CLIPModel.from_pretrained(id).save_pretrained(PATH); "
    "CLIPProcessor.from_pretrained(id).save_pretrained(PATH) on a machine with network), "
    "or a hub id with network access (unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), or --clip none to skip CLIP scores"
)
_FID_WEIGHTS_FIX = (
    "pass --inception-weights PATH to the converted TF FID Inception weights (pt_inception-2015-12-05-6726825d.pth "
    "from pytorch-fid's releases or weights-inception-2015-12-05-6726825d.pth from torch-fidelity's, "
    "or a .safetensors copy)"
)
_FID_OTHER = (
    "or give --fid-features another extractor ('clip' for FD-CLIP, 'module:function' or 'file.py:function' "
    "returning an nn.Module images [B, 3, H, W] in [0, 1] -> [B, D]), or --fid-features none to skip FID"
)
_FID_SPEC = (
    "--fid-features takes 'inception', 'clip', 'none', or 'module:function' / 'file.py:function' where function() "
    "returns an nn.Module mapping images [B, 3, H, W] float in [0, 1] to features [B, D]"
)
_FID_FIX = (
    "pip install torch-fidelity (it pulls torchvision: install the build matching your torch) and "
    f"{_FID_WEIGHTS_FIX}; {_FID_OTHER}"
)


def _import_torchmetrics() -> Any:
    try:
        import torchmetrics  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "text-to-image evaluation needs torchmetrics and transformers: pip install 'scfm[eval]'"
        ) from err
    return torchmetrics


def to_uint8(images: Tensor) -> Tensor:
    """Images [B, C, H, W] float in [0, 1] -> uint8 in [0, 255] (rounded, clamped), as a PNG stores them."""
    return (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def check_images(images: Tensor, name: str = "images", batch: int | None = None) -> Tensor:
    """Validate images [B, 3, H, W] float in [0, 1]; returns them clamped to [0, 1] as float32.

    Raises ``ValueError`` naming ``name`` for a wrong shape or dtype, a batch size other than
    ``batch`` (if given) or NaN / inf values.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} has shape {shape}; expected RGB images [B, 3, H, W] float in [0, 1]")
    if not images.is_floating_point():
        raise ValueError(
            f"{name} has dtype {images.dtype}; expected float images in [0, 1] (divide uint8 images by 255)"
        )
    if batch is not None and images.shape[0] != batch:
        raise ValueError(
            f"{name} holds {images.shape[0]} images for {batch} prompts; generate must return one image per prompt"
        )
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or inf; the sampler diverged (check steps, shift and LoRA scale)")
    return images.float().clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------- CLIP
class _ClipEmbeddings(nn.Module):
    """A ``CLIPModel`` whose ``get_*_features`` return projected embeddings [B, P] as tensors.

    transformers >= 5 returns a ``BaseModelOutputWithPooling`` there (``pooler_output`` holds the
    projection), which torchmetrics 1.9 does not unwrap (Lightning-AI/torchmetrics#3407).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out: Any) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: Tensor, **kw: Any) -> Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values, **kw))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw: Any) -> Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kw))


class _TruncatingProcessor:
    """A ``CLIPProcessor`` that cuts prompts to the text model's length with the tokenizer.

    The tokenizer keeps the end token that CLIP pools at; torchmetrics, handed longer ids,
    would cut them after the fact and drop it.
    """

    def __init__(self, processor: Any, max_length: int) -> None:
        self.processor = processor
        self.max_length = max_length

    def __call__(self, *args: Any, **kw: Any) -> Any:
        if kw.get("text") is not None:
            kw.setdefault("truncation", True)
            kw.setdefault("max_length", self.max_length)
        return self.processor(*args, **kw)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _is_hub_id(name: str) -> bool:
    """True for ``org/name`` strings (hub ids); anything else is taken as a local path."""
    return bool(_HUB_ID.match(name)) and not name.startswith(".")


def load_clip(clip_model: str | PathLike, local_files_only: bool | None = None) -> tuple[nn.Module, Any]:
    """Load ``(CLIPModel, CLIPProcessor)`` from a local ``save_pretrained`` folder or a hub id.

    The model comes back in eval mode with ``requires_grad`` off, float32, on the CPU.
    ``local_files_only`` None follows ``HF_HUB_OFFLINE`` (transformers' own rule).

    Raises ``FileNotFoundError`` for a path that does not exist, ``ValueError`` for a folder
    that is not a CLIP model or lacks its processor, and ``OSError`` when a hub id cannot be
    fetched; each message says how to provide the model.
    """
    _import_torchmetrics()
    from transformers import AutoConfig, CLIPModel, CLIPProcessor

    name = os.fspath(clip_model)
    local = os.path.isdir(os.path.expanduser(name))
    if local:
        name = os.path.expanduser(name)
    elif os.path.exists(os.path.expanduser(name)) or not _is_hub_id(name):
        raise FileNotFoundError(f"--clip {name!r} is not a model folder (no such directory); {_CLIP_FIX}")
    kw: dict[str, Any] = {} if local_files_only is None else {"local_files_only": local_files_only}
    try:
        config = AutoConfig.from_pretrained(name, **kw)
    except (OSError, ValueError) as err:
        where = "folder" if local else "hub id"
        raise OSError(
            f"could not load the CLIP config from {where} {name!r} ({type(err).__name__}: {err}); {_CLIP_FIX}"
        ) from err
    model_type = getattr(config, "model_type", None)
    if model_type != "clip":
        raise ValueError(
            f"--clip {name!r} holds a {model_type!r} model, not a CLIP model (model_type 'clip'); {_CLIP_FIX}"
        )
    try:
        processor = CLIPProcessor.from_pretrained(name, **kw)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(
            f"--clip {name!r} has no usable CLIP processor (tokenizer + image processor): {err}; "
            f"save it next to the model with CLIPProcessor.from_pretrained(ID).save_pretrained({name!r}). {_CLIP_FIX}"
        ) from err
    try:
        model = CLIPModel.from_pretrained(name, **kw)
    except (OSError, ValueError) as err:
        raise OSError(f"could not load the CLIP weights from {name!r} ({err}); {_CLIP_FIX}") from err
    model.float().eval().requires_grad_(False)  # transformers 5 keeps the checkpoint dtype by default
    return model, processor


class ClipScorer:
    """CLIP score of images against prompts, accumulated over batches (torchmetrics ``CLIPScore``).

    Args:
        clip_model: local ``save_pretrained`` folder or hub id of a CLIP model with its processor.
        device: where CLIP runs; images may live anywhere.
        local_files_only: passed to ``from_pretrained``; None follows ``HF_HUB_OFFLINE``.

    ``update(images, prompts)`` adds a batch; ``compute()`` is the mean ``100 * cos`` over all
    added pairs (clamped at 0); ``reset()`` starts a new set.
    """

    def __init__(
        self,
        clip_model: str | PathLike = DEFAULT_CLIP,
        device: str | torch.device = "cpu",
        local_files_only: bool | None = None,
    ) -> None:
        _import_torchmetrics()
        from torchmetrics.multimodal.clip_score import CLIPScore

        self.name = os.fspath(clip_model)
        model, processor = load_clip(clip_model, local_files_only)
        self.model = _ClipEmbeddings(model)
        self.processor = _TruncatingProcessor(processor, int(model.config.text_config.max_position_embeddings))
        self.device = torch.device(device)
        self.metric = CLIPScore(model_name_or_path=lambda: (self.model, self.processor)).to(self.device)
        self.n = 0

    def reset(self) -> None:
        self.metric.reset()
        self.n = 0

    @torch.inference_mode()
    def update(self, images: Tensor, prompts: Sequence[str]) -> None:
        """Add images [B, 3, H, W] in [0, 1] and their B prompts."""
        images = check_images(images, "images", batch=len(prompts))
        self.metric.update(to_uint8(images).to(self.device), list(prompts))
        self.n += len(prompts)

    def compute(self) -> float:
        """Mean CLIP score in [0, 100] over everything added since the last reset."""
        if self.n == 0:
            raise ValueError("no images were added; call update(images, prompts) first")
        return float(self.metric.compute())

    @torch.inference_mode()
    def image_embeddings(self, images: Tensor) -> Tensor:
        """Projected CLIP image embeddings [B, P] float32 for images [B, 3, H, W] in [0, 1]."""
        images = check_images(images)
        pixels = self.processor(images=list(to_uint8(images).cpu()), return_tensors="pt")["pixel_values"]
        self.model.to(self.device)
        return self.model.get_image_features(pixels.to(self.device)).float()


def clip_score(images: Tensor, prompts: Sequence[str], clip_model: str | PathLike | ClipScorer = DEFAULT_CLIP) -> float:
    """Mean CLIP score (``100 * cos``, clamped at 0) of images [B, 3, H, W] in [0, 1] against B prompts.

    ``clip_model`` is a local ``save_pretrained`` folder, a hub id, or a loaded :class:`ClipScorer`.
    """
    scorer = clip_model if isinstance(clip_model, ClipScorer) else ClipScorer(clip_model)
    scorer.reset()
    scorer.update(images, prompts)
    return scorer.compute()


# ------------------------------------------------------------------------------------------ FID
@dataclass
class FidFeatures:
    """A feature extractor for Fréchet distances.

    module: ``images -> features [B, D]``; its input is uint8 [B, 3, H, W] in [0, 255]
        (``input="uint8"``, Inception's convention) or float [B, 3, H, W] in [0, 1]
        (``input="float"``, every other extractor).
    name: recorded next to the scores (``"inception-v3-2048"``, ``"clip"``, ...).
    dim: feature width D, or None to let torchmetrics probe it with one dummy image.
    """

    module: nn.Module
    name: str
    input: Literal["uint8", "float"] = "float"
    dim: int | None = None


class _ClipImageFeatures(nn.Module):
    """CLIP image embeddings as FID features: images [B, 3, H, W] float in [0, 1] -> [B, P]."""

    def __init__(self, scorer: ClipScorer) -> None:
        super().__init__()
        self.scorer = scorer
        self.num_features = int(scorer.model.config.projection_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.scorer.image_embeddings(images)


def _read_inception_state(path: Path) -> dict[str, Tensor]:
    """The Inception state dict from ``.safetensors`` or the published ``.pth`` (tensors only)."""
    if not path.is_file():
        raise FileNotFoundError(f"--inception-weights {str(path)!r} does not exist; {_FID_WEIGHTS_FIX}; {_FID_OTHER}")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:  # the published file is a torch state dict; weights_only refuses anything but tensors
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise ValueError(
            f"--inception-weights {str(path)!r} is not a readable torch state dict ({str(err)[:300]}); "
            f"{_FID_WEIGHTS_FIX}"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"--inception-weights {str(path)!r} does not hold a state dict of tensors; {_FID_WEIGHTS_FIX}")
    return state


def has_torch_fidelity() -> bool:
    """Whether torch-fidelity (the Inception-v3 port torchmetrics' FID uses) is importable."""
    return importlib.util.find_spec("torch_fidelity") is not None


def load_inception(weights: PathLike | None = None) -> FidFeatures:
    """The FID Inception-v3 (torch-fidelity's TF port, 2048-d pool features) from torchmetrics.

    Args:
        weights: the converted TF weights (``pt_inception-2015-12-05-6726825d.pth`` or
            ``weights-inception-2015-12-05-6726825d.pth``, or a ``.safetensors`` copy). The file
            is read here with tensors-only loading and handed to torch-fidelity in memory.
            None lets torch-fidelity download it (network) or take it from the torch hub cache.

    Raises ``ImportError`` without torch-fidelity, ``FileNotFoundError`` / ``ValueError`` for a
    missing or unreadable file, ``RuntimeError`` when the download fails; all say how to fix it.
    """
    _import_torchmetrics()
    if not has_torch_fidelity():
        raise ImportError(f"FID with the Inception network needs torch-fidelity, which is not installed: {_FID_FIX}")
    from torchmetrics.image.fid import FrechetInceptionDistance

    source: Any = None
    if weights is not None:
        state = _read_inception_state(Path(weights))
        source = io.BytesIO()
        torch.save(state, source)
        source.seek(0)
    try:
        metric = FrechetInceptionDistance(
            feature=INCEPTION_FEATURE_DIM, normalize=False, feature_extractor_weights_path=source
        )
    except (RuntimeError, KeyError) as err:
        raise ValueError(
            f"--inception-weights {str(weights)!r} does not fit torch-fidelity's Inception-v3 ({str(err)[:300]}); "
            f"{_FID_WEIGHTS_FIX}"
        ) from err
    except Exception as err:  # noqa: BLE001 - urllib / hub errors vary by version
        if weights is not None:
            raise
        raise RuntimeError(
            f"torch-fidelity could not download the Inception weights ({type(err).__name__}: {err}); "
            f"{_FID_WEIGHTS_FIX}; {_FID_OTHER}"
        ) from err
    module = metric.inception
    module.num_features = INCEPTION_FEATURE_DIM
    return FidFeatures(
        module=module, name=f"inception-v3-{INCEPTION_FEATURE_DIM}", input="uint8", dim=INCEPTION_FEATURE_DIM
    )


def load_feature_callable(spec: str) -> nn.Module:
    """Build a user feature extractor from ``'package.module:function'`` or ``'path/file.py:function'``.

    ``function()`` (no arguments) must return an ``nn.Module`` mapping images [B, 3, H, W]
    float in [0, 1] to features [B, D]; an attribute ``num_features`` (int) saves a probe pass.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"--fid-features {spec!r} is not a known extractor; {_FID_SPEC}")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise FileNotFoundError(f"--fid-features file {target!r} does not exist")
            module_spec = importlib.util.spec_from_file_location(f"scfm_fid_features_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            mod = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(target)
        factory = getattr(mod, attr)
    except (ImportError, AttributeError, FileNotFoundError) as err:
        raise ValueError(f"--fid-features {spec!r} cannot be loaded ({err}); {_FID_SPEC}") from err
    module = factory() if not isinstance(factory, nn.Module) else factory
    if not isinstance(module, nn.Module):
        raise ValueError(f"--fid-features {spec!r} returned a {type(module).__name__}, not an nn.Module; {_FID_SPEC}")
    return module.eval()


def resolve_fid_features(
    fid_features: str | nn.Module | FidFeatures | None,
    inception_weights: PathLike | None = None,
    clip: ClipScorer | None = None,
) -> FidFeatures | None:
    """Turn ``--fid-features`` into a :class:`FidFeatures` (or None for 'none'), loading weights now.

    ``'inception'`` (default): :func:`load_inception` (``inception_weights``); ``'clip'``: the
    image embeddings of ``clip`` (FD-CLIP: not comparable with published FIDs); ``'module:fn'``
    / ``'file.py:fn'``: :func:`load_feature_callable`; an ``nn.Module``: used as is (float input).
    """
    if fid_features is None or isinstance(fid_features, FidFeatures):
        return fid_features
    if isinstance(fid_features, nn.Module):
        dim = getattr(fid_features, "num_features", None)
        return FidFeatures(
            module=fid_features.eval(), name=type(fid_features).__name__, dim=int(dim) if dim is not None else None
        )
    spec = str(fid_features)
    if spec == "none":
        return None
    if spec == "inception":
        return load_inception(inception_weights)
    if spec == "clip":
        if clip is None:
            raise ValueError(
                "--fid-features clip needs a CLIP model, but --clip is 'none'; give --clip a CLIP model, "
                f"or {_FID_SPEC}"
            )
        module = _ClipImageFeatures(clip)
        return FidFeatures(module=module, name=f"clip:{clip.name}", dim=module.num_features)
    module = load_feature_callable(spec)
    dim = getattr(module, "num_features", None)
    return FidFeatures(module=module, name=spec, dim=int(dim) if dim is not None else None)


def load_scorers(
    clip: str | PathLike | ClipScorer | None,
    fid_features: str | nn.Module | FidFeatures | None,
    inception_weights: PathLike | None = None,
    device: str | torch.device = "cpu",
    local_files_only: bool | None = None,
) -> tuple[ClipScorer | None, FidFeatures | None]:
    """Load the CLIP scorer and the FID features (see :func:`evaluate_text_to_image`), cheapest checks first.

    The FID features are resolved before CLIP (a missing torch-fidelity fails in milliseconds,
    CLIP ViT-L/14 takes seconds to load) unless they are the CLIP embeddings themselves.
    """
    needs_clip = isinstance(fid_features, str) and fid_features == "clip"
    features = None if needs_clip else resolve_fid_features(fid_features, inception_weights)
    scorer = clip if isinstance(clip, ClipScorer) or clip is None else ClipScorer(clip, device, local_files_only)
    if needs_clip:
        features = resolve_fid_features(fid_features, inception_weights, scorer)
    return scorer, features


class FrechetScorer:
    """FID (torchmetrics) of image sets against one fixed "real" set, features cached.

    ``add_real(images)`` builds the fixed set once; then for each compared set ``reset()``,
    ``add(images)`` per batch and ``compute()``. Images are [B, 3, H, W] float in [0, 1].
    """

    def __init__(self, features: FidFeatures, device: str | torch.device = "cpu") -> None:
        _import_torchmetrics()
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.features = features
        self.device = torch.device(device)
        self.metric = FrechetInceptionDistance(
            feature=features.module, normalize=features.input == "float", reset_real_features=False
        ).to(self.device)
        self.dim = int(self.metric.real_features_sum.shape[0])

    def _prepare(self, images: Tensor) -> Tensor:
        images = check_images(images)
        return (to_uint8(images) if self.features.input == "uint8" else images).to(self.device)

    @torch.inference_mode()
    def add_real(self, images: Tensor) -> None:
        """Add images [B, 3, H, W] in [0, 1] to the fixed reference set."""
        self.metric.update(self._prepare(images), real=True)

    @torch.inference_mode()
    def add(self, images: Tensor) -> None:
        """Add images [B, 3, H, W] in [0, 1] to the set being compared."""
        self.metric.update(self._prepare(images), real=False)

    def reset(self) -> None:
        """Forget the compared set; the reference set stays."""
        self.metric.reset()

    @property
    def n_real(self) -> int:
        return int(self.metric.real_features_num_samples)

    @property
    def n(self) -> int:
        return int(self.metric.fake_features_num_samples)

    def compute(self) -> float:
        """FID (>= 0 up to round-off) between the two sets; both need at least 2 images."""
        if self.n_real < 2 or self.n < 2:
            raise ValueError(f"FID needs at least 2 images per set; got {self.n_real} reference and {self.n} compared")
        return float(self.metric.compute())


def fid_warning(n: int, dim: int, what: str) -> str | None:
    """The poor-conditioning warning text when ``n`` samples face ``dim``-wide features, else None."""
    if n >= dim:
        return None
    return (
        f"{what}: n={n} samples < feature dim {dim}: the covariances are rank-deficient and the FID is biased "
        f"upward; compare FIDs only at equal n and features, and use n >= {dim} samples (Inception: thousands "
        "of prompts) for numbers comparable with published ones"
    )


def frechet_distance_images(
    images_a: Tensor,
    images_b: Tensor,
    feature: str | nn.Module | FidFeatures = "inception",
    inception_weights: PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> float:
    """FID between image sets a [N, 3, H, W] and b [M, 3, H', W'] in [0, 1] (N, M >= 2).

    ``feature``: ``'inception'`` (torch-fidelity, weights from ``inception_weights``), an
    ``nn.Module`` mapping float images in [0, 1] to [B, D], or a :class:`FidFeatures`.
    Warns when min(N, M) is below the feature width (see module docstring).
    """
    for name, images in (("images_a", images_a), ("images_b", images_b)):
        check_images(images, name)
        if images.shape[0] < 2:
            raise ValueError(f"{name} holds {images.shape[0]} image(s); FID needs at least 2 per set")
    features = resolve_fid_features(feature, inception_weights)
    assert features is not None
    scorer = FrechetScorer(features, device)
    for start in range(0, images_a.shape[0], batch_size):
        scorer.add_real(images_a[start : start + batch_size])
    for start in range(0, images_b.shape[0], batch_size):
        scorer.add(images_b[start : start + batch_size])
    message = fid_warning(min(scorer.n_real, scorer.n), scorer.dim, "frechet_distance_images")
    if message:
        warnings.warn(message, stacklevel=2)
    return scorer.compute()
