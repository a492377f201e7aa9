"""Image prediction: encoded images in, one batched inference, labelled top-k out.

The data plane runs the steps: ``image_call`` checks, ``prepare`` decodes (off the event
loop), the runner runs, ``image_answer`` labels.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import BadRequest, InvalidImage
from app.inference.image_plan import ImagePlan, Invert, image_plan
from app.inference.postprocessing import ClassifierPlan, classifier_plan, predictions
from app.inference.preprocessing import ImageLimits, preprocess
from app.protocol.tensors import jsonable
from app.registry.model import Feeds, ModelVersion


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """What a request may choose: k, raw outputs, and the inversion (overriding the config)."""

    top_k: int | None = None
    raw: bool = False
    invert: Invert | None = None


def plans(model: ModelVersion) -> tuple[ImagePlan, ClassifierPlan | None]:
    """The model's effective pre- and postprocessing (400 when it cannot take images)."""
    pre = image_plan(model.name, model.inputs, model.config.preprocess)
    post = classifier_plan(model.name, model.outputs, model.config.postprocess)
    return pre, post


def describe(model: ModelVersion) -> dict[str, Any]:
    """``preprocess`` and ``postprocess`` for model metadata; why not, if it takes no images."""
    try:
        pre, post = plans(model)
    except BadRequest as exc:
        return {"preprocess": None, "postprocess": None, "images_unsupported": exc.message}
    return {"preprocess": pre.describe(), "postprocess": post.describe() if post else None}


def image_bytes(item: bytes | str, what: str = "image") -> bytes:
    """The bytes of an image sent as bytes, base64 text or a ``data:...;base64,`` URL."""
    if isinstance(item, bytes):
        return item
    text = item
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InvalidImage(f"{what}: a data: URL must be base64-encoded")
    compact = "".join(text.split())  # line-wrapped base64 (the base64 tool's) is fine
    altchars = b"-_" if "-" in compact or "_" in compact else None
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{what} is not valid base64: {exc}") from None


def prepare(
    items: Sequence[bytes | str], plan: ImagePlan, limits: ImageLimits, invert: Invert | None
) -> np.ndarray:
    """Base64-decode, decode and preprocess every image into one tensor (blocking)."""
    many = len(items) > 1
    images = [
        image_bytes(item, f"images[{i}]" if many else "image") for i, item in enumerate(items)
    ]
    return preprocess(images, plan, limits.max_pixels, invert, limits)


class ImageDecoders:
    """Threads of their own that decode requests' images, ``concurrency`` at a time.

    Decoding takes memory in proportion to the images (bounded per image and per request by
    ``limits``); holding the number of decodes at once bounds the total, and requests beyond
    it wait their turn without holding a thread (or the event loop's executor).
    """

    def __init__(self, limits: ImageLimits, concurrency: int) -> None:
        self.limits = limits
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="image-decode")

    async def prepare(
        self, items: Sequence[bytes | str], plan: ImagePlan, invert: Invert | None
    ) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, prepare, items, plan, self.limits, invert)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class ImageCall:
    """How one image request runs on its model: the preprocessing, postprocessing, outputs."""

    pre: ImagePlan
    post: ClassifierPlan | None
    #: Outputs to compute (None: all of them, for ``raw``).
    outputs: list[str] | None


def image_call(model: ModelVersion, count: int, options: ImageOptions) -> ImageCall:
    """Check that ``count`` images with ``options`` suit the model; 400 when not."""
    pre, post = plans(model)
    if count == 0:
        raise BadRequest("no image in the request")
    if pre.fixed_batch is not None and count != pre.fixed_batch:
        raise BadRequest(
            f"model '{model.name}' takes exactly {pre.fixed_batch} image(s) per request, "
            f"got {count}"
        )
    if model.batched and count > model.max_batch_size:
        raise BadRequest(
            f"{count} images is over the model's max_batch_size {model.max_batch_size}"
        )
    if post is None and not options.raw:
        outputs = ", ".join(f"{s.name} {list(s.shape)}" for s in model.outputs)
        raise BadRequest(
            f"model '{model.name}' has no class-score output [batch, classes] (outputs: "
            f"{outputs}); ask for raw=true to get its outputs"
        )
    wanted = None if options.raw or post is None else [post.output]
    return ImageCall(pre, post, wanted)


def image_answer(
    model: ModelVersion, call: ImageCall, results: Feeds, options: ImageOptions
) -> dict[str, Any]:
    """The labelled top-k predictions (and raw outputs, if asked for) of one image request."""
    body: dict[str, Any] = {"model": model.name, "version": str(model.version)}
    if call.post is not None:
        post = call.post
        body["predictions"] = predictions(results[post.output], post, options.top_k, model.labels)
    if options.raw:
        body["outputs"] = {name: jsonable(array) for name, array in results.items()}
    return body
