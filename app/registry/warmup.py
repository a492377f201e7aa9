"""Warm-up runs of a version being loaded: on the model's own samples, or on generated inputs.

Generated inputs (zeros, and "0" for strings, which a string-to-number Cast parses) suit most
graphs, but not every one: a graph may divide by an input or reshape by its values. So a run
on generated inputs that fails only skips the warm-up, with a warning and a note in the
model's metadata, and the model still serves: it is the requests' data that counts. A run on
the samples the model's config names (``warmup.samples``) must succeed: those are what the
model is said to take.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from app.errors import InvalidModel
from app.registry.time_limits import StepTimedOut, no_deadline

if TYPE_CHECKING:
    from app.registry.model import TensorSpec

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
Run = Callable[[ort.InferenceSession, Feeds], list[np.ndarray]]


def sample_feeds(path: Path, inputs: list[TensorSpec]) -> Feeds:
    """The warm-up inputs of an ``.npz`` holding one array per model input (422 if unusable)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise InvalidModel(f"warmup.samples: {path.name} is not in the model folder") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidModel(f"warmup.samples: {path.name} is not a readable .npz: {exc}") from None
    feeds: Feeds = {}
    for spec in inputs:
        array = arrays.get(spec.name)
        if array is None:
            raise InvalidModel(f"warmup.samples: {path.name} has no array named '{spec.name}'")
        if spec.datatype == "BYTES":
            if array.dtype.kind not in "US":
                raise InvalidModel(f"warmup.samples: '{spec.name}' must hold strings")
            feeds[spec.name] = array.astype(np.object_)
        else:
            feeds[spec.name] = array.astype(spec.dtype, copy=False)
    return feeds


def warm_up(
    label: str,
    sessions: Sequence[ort.InferenceSession],
    feeds: list[Feeds],
    generated: bool,
    run: Run = no_deadline,
) -> str | None:
    """Run every feed on every session with ``run``; returns why a warm-up on generated
    inputs was skipped (None when it ran). A failure on the model's own samples is an
    ``InvalidModel``; a run past its time limit is ``StepTimedOut`` either way."""
    try:
        for feed in feeds:
            for session in sessions:
                run(session, feed)
    except StepTimedOut:
        raise
    except Exception as exc:  # onnxruntime raises several unrelated types
        if not generated:
            raise InvalidModel(f"warm-up inference on warmup.samples failed: {exc}") from None
        reason = f"warm-up on generated inputs failed ({str(exc)[:300]}); set warmup.samples"
        log.warning("%s: %s; it serves without a warm-up", label, reason)
        return reason
    return None
