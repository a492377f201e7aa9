"""Inputs for calibration and the accuracy check: the user's samples, or generated ones.

Samples hold one array per model input, stacked along a first axis that counts the samples:
for a batched model its rows (``[K, ...]``), for an unbatched one whole inputs (``[K, *shape]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.errors import ServingError
from app.inference.image_plan import image_plan
from app.inference.preprocessing import preprocess
from app.optimize.errors import OptimizationFailed
from app.registry.config import PreprocessConfig
from app.registry.model import TensorSpec, warmup_feeds

Feeds = dict[str, np.ndarray]

#: Files a model folder may hold its samples in, tried in this order.
SAMPLE_FILES = ("samples.npz", "samples")
#: Samples used at most (the rest of a larger file is left out); bounds the step's time.
MAX_SAMPLES = 2048
#: Generated samples: zeros (the warm-up input) and then random ones, this many in all.
GENERATED_SAMPLES = 64
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True, slots=True)
class Samples:
    """Inputs stacked along their first axis, and where they came from."""

    feeds: Feeds
    source: str

    @property
    def count(self) -> int:
        return len(next(iter(self.feeds.values()))) if self.feeds else 0

    def part(self, start: int, stop: int | None = None) -> Samples:
        return Samples({k: v[start:stop] for k, v in self.feeds.items()}, self.source)


def default_samples(model_dir: Path) -> Path | None:
    """The samples a model folder holds (``samples.npz`` or ``samples/``), if any."""
    for name in SAMPLE_FILES:
        candidate = model_dir / name
        if candidate.exists():
            return candidate
    return None


def load_samples(
    path: Path, inputs: list[TensorSpec], batched: bool, preprocess_config: PreprocessConfig | None
) -> Samples:
    """Read an ``.npz`` of named inputs, or a folder of images for an image model."""
    if path.is_dir():
        return _image_samples(path, inputs, batched, preprocess_config)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise OptimizationFailed(f"samples {path.name}: not a readable .npz file ({exc})") from None
    names = {spec.name for spec in inputs}
    missing, extra = sorted(names - set(arrays)), sorted(set(arrays) - names)
    if missing or extra:
        raise OptimizationFailed(
            f"samples {path.name} must hold exactly the model's inputs "
            f"({', '.join(sorted(names))}); missing: {missing or 'none'}, extra: {extra or 'none'}"
        )
    feeds = {spec.name: _checked(spec, arrays[spec.name], batched, path.name) for spec in inputs}
    counts = {len(array) for array in feeds.values()}
    if len(counts) != 1 or 0 in counts:
        raise OptimizationFailed(
            f"samples {path.name}: every input needs the same, non-zero number of samples "
            f"(first dimensions: {sorted(counts)})"
        )
    return Samples({k: v[:MAX_SAMPLES] for k, v in feeds.items()}, path.name)


def _checked(spec: TensorSpec, array: np.ndarray, batched: bool, label: str) -> np.ndarray:
    expected = spec.shape[1:] if batched else spec.shape
    shape = array.shape[1:]
    fits = len(shape) == len(expected) and all(
        want in (-1, got) for want, got in zip(expected, shape, strict=True)
    )
    if array.ndim == 0 or not fits:
        axis = "rows" if batched else "samples"
        raise OptimizationFailed(
            f"samples {label}: input '{spec.name}' needs shape [{axis}, "
            f"{', '.join(str(d) for d in expected)}], got {list(array.shape)}"
        )
    if spec.datatype == "BYTES" or not np.can_cast(array.dtype, spec.dtype, "same_kind"):
        raise OptimizationFailed(
            f"samples {label}: input '{spec.name}' is {spec.datatype}, the samples are "
            f"{array.dtype}"
        )
    return np.ascontiguousarray(array, dtype=spec.dtype)


def _image_samples(
    folder: Path,
    inputs: list[TensorSpec],
    batched: bool,
    preprocess_config: PreprocessConfig | None,
) -> Samples:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise OptimizationFailed(f"samples {folder.name}/ holds no images")
    if len(inputs) != 1:
        raise OptimizationFailed(
            f"samples {folder.name}/: images feed models with one input, this one has "
            f"{len(inputs)}: give an .npz of named inputs instead"
        )
    try:
        plan = image_plan(folder.parent.name, inputs, preprocess_config)
        images = [p.read_bytes() for p in files[:MAX_SAMPLES]]
        tensor = preprocess(images, plan, MAX_IMAGE_PIXELS)
    except ServingError as exc:
        raise OptimizationFailed(f"samples {folder.name}/: {exc.message}") from None
    if not batched and plan.fixed_batch not in (None, 1):
        raise OptimizationFailed(
            f"samples {folder.name}/: the model takes {plan.fixed_batch} images at once: "
            "give an .npz of whole inputs instead"
        )
    if not batched:
        tensor = tensor[:, np.newaxis]  # each sample is a whole input of one image
    return Samples({plan.input: tensor}, f"{folder.name}/ ({len(images)} images)")


def generated_samples(inputs: list[TensorSpec], batched: bool, seed: int = 0) -> Samples:
    """The warm-up input (zeros) and random ones: floats uniform in [0, 1) for image-like
    (4-D) inputs, else normal; other types stay zeros (they may be indices or flags)."""
    rng = np.random.default_rng(seed)
    count = GENERATED_SAMPLES
    feeds: Feeds = {}
    for name, zeros in warmup_feeds(inputs, count).items():
        stacked = zeros if batched else np.repeat(zeros[np.newaxis], count, axis=0)
        if stacked.dtype.kind == "f" and stacked.size:
            shape = (count - 1, *stacked.shape[1:])
            image_like = stacked.ndim - (0 if batched else 1) == 4
            values = rng.random(shape) if image_like else rng.standard_normal(shape)
            stacked = np.concatenate([stacked[:1], values.astype(stacked.dtype)])
        feeds[name] = stacked
    return Samples(feeds, f"generated ({count}: zeros, then random)")


def runs(samples: Samples, batched: bool, batch: int) -> list[Feeds]:
    """The samples as session feeds: ``batch`` rows a run, or one sample a run."""
    if not batched:
        return [{k: v[i] for k, v in samples.feeds.items()} for i in range(samples.count)]
    steps = math.ceil(samples.count / batch)
    return [
        {k: v[i * batch : (i + 1) * batch] for k, v in samples.feeds.items()} for i in range(steps)
    ]
