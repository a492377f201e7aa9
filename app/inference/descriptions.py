"""What the protocol says of a model: v2 metadata and Triton's model configuration."""

from __future__ import annotations

from typing import Any

from app.errors import BadRequest
from app.inference.images import describe as image_processing
from app.inference.images import plans
from app.protocol.datatypes import V2_TO_TRITON_CONFIG
from app.registry.config import VersionPolicy
from app.registry.model import PLATFORM, ModelVersion, TensorSpec


def model_metadata(model: ModelVersion, versions: list[str]) -> dict[str, Any]:
    """v2 model metadata, with this server's own keys (providers, batching, images) added."""
    return {
        "name": model.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [s.metadata() for s in model.inputs],
        "outputs": [s.metadata() for s in model.outputs],
        "providers": model.providers,
        "provider_fallback": model.fallback,
        "max_batch_size": model.max_batch_size,
        **image_processing(model),
        **model.extras,
    }


def image_formats(model: ModelVersion) -> dict[str, str]:
    """Triton's ``format`` of the input an image feeds (its layout, declared in
    ``preprocess.layout`` or inferred), by input name; empty for a model without one."""
    try:
        pre, _ = plans(model)
    except BadRequest:
        return {}
    return {pre.input: f"FORMAT_{pre.layout}"}


def _triton_policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.policy == "latest":
        return {"latest": {"num_versions": policy.num_versions}}
    if policy.policy == "all":
        return {"all": {}}
    return {"specific": {"versions": policy.versions}}


def model_config(model: ModelVersion) -> dict[str, Any]:
    """The model's configuration in Triton's shape (batch dimension left out of dims).

    It can be sent back as a load request's ``config``; ``providers`` is this server's own.
    """
    skip = 1 if model.batched else 0
    formats = image_formats(model)

    def tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "data_type": V2_TO_TRITON_CONFIG[s.datatype],
                **({"format": formats[s.name]} if s.name in formats else {}),
                "dims": list(s.shape[skip:]),
            }
            for s in specs
        ]

    config = model.config
    on_gpu = model.provider != "CPUExecutionProvider"
    doc: dict[str, Any] = {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": model.max_batch_size,
        "input": tensors(model.inputs),
        "output": tensors(model.outputs),
        "instance_group": [
            {
                "count": config.instances.count,
                "kind": "KIND_GPU" if on_gpu else "KIND_CPU",
                "gpus": config.instances.gpus,
            }
        ],
        "version_policy": _triton_policy(config.version_policy),
        "providers": model.providers,
    }
    if config.dynamic_batching is not None and config.dynamic_batching.enabled:
        batching = config.dynamic_batching
        doc["dynamic_batching"] = {
            "preferred_batch_size": batching.preferred_batch_sizes,
            "max_queue_delay_microseconds": batching.max_queue_delay_us,
        }
    return doc
