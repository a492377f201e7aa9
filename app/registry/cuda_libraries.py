"""CUDA and cuDNN from NVIDIA's pip packages, loaded before the first GPU session is built."""

from __future__ import annotations

import logging
from functools import cache

import onnxruntime as ort

log = logging.getLogger(__name__)


@cache
def preload_cuda_libraries() -> bool:
    """Load the libraries ``onnxruntime-gpu[cuda,cudnn]`` installed; False if this build has none.

    The CUDA provider finds its libraries through the dynamic loader, which does not search
    Python's site-packages; loading them once per process by path makes them resolvable.
    Libraries that are missing are reported on stdout by onnxruntime and sessions fall back to
    the CPU provider, which the provider-fallback metric then shows.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        log.warning("this onnxruntime cannot preload CUDA libraries; GPU sessions may fall back")
        return False
    preload()
    return True
