"""Accept a Triton-shaped model config (as ``load_model(config=...)`` sends) as a config.json.

Keys in this service's own shape pass through untouched; Triton's spellings of the same
ideas are translated; ``input``/``output`` are dropped (the graph defines them) except an
input's ``format`` (FORMAT_NCHW/NHWC), which declares the image layout (``preprocess``); anything
else is left for ``ModelConfig`` to refuse by name. The config that GET
``/v2/models/{m}/config`` returns can so be sent back as it is.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.errors import InvalidModel
from app.registry.repository import config_object, parse_config

PLATFORMS = {"onnxruntime_onnx", "onnxruntime"}
KINDS = {"KIND_CPU": "cpu", "KIND_GPU": "gpu", "KIND_AUTO": "auto", "KIND_MODEL": "auto"}
_DROPPED = ("input", "output", "platform", "backend", "name", "default_model_filename")
#: Triton's input ``format`` values and the image layout each declares.
FORMATS = {"FORMAT_NCHW": "NCHW", "FORMAT_NHWC": "NHWC", "FORMAT_NONE": None}


def _image_input(doc: dict[str, Any]) -> dict[str, Any] | None:
    """``preprocess`` keys for the input whose ``format`` declares an image layout, if any."""
    inputs = doc.get("input") or []
    if not isinstance(inputs, list):
        raise InvalidModel("input must be a list of tensors")
    declared: list[tuple[str, str]] = []
    for item in inputs:
        if not isinstance(item, dict) or "format" not in item:
            continue
        value = item["format"]
        if value not in FORMATS:
            raise InvalidModel(
                f"input format {str(value)[:40]!r} is not one of {', '.join(FORMATS)}"
            )
        layout = FORMATS[value]
        if layout is not None:
            declared.append((str(item.get("name", "")), layout))
    if not declared:
        return None
    if len(declared) > 1:
        raise InvalidModel("only one input may declare an image format (FORMAT_NCHW/NHWC)")
    name, layout = declared[0]
    return {"input": name, "layout": layout} if name else {"layout": layout}


def _instances(groups: Any) -> dict[str, Any]:
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise InvalidModel("instance_group must be a non-empty list of objects")
    kinds = {KINDS.get(str(g.get("kind", "KIND_AUTO")), "?") for g in groups}
    if "?" in kinds or len(kinds) > 1:
        raise InvalidModel("instance_group: use one kind of KIND_CPU, KIND_GPU or KIND_AUTO")
    gpus: list[Any] = []
    for group in groups:
        gpus.extend(group.get("gpus") or [])
    count = sum(int(g.get("count", 1)) for g in groups)
    return {"count": count, "kind": kinds.pop(), "gpus": gpus}


def _version_policy(policy: dict[str, Any]) -> dict[str, Any]:
    if "latest" in policy:
        return {"policy": "latest", "num_versions": policy["latest"].get("num_versions", 1)}
    if "all" in policy:
        return {"policy": "all"}
    if "specific" in policy:
        return {"policy": "specific", "versions": policy["specific"].get("versions", [])}
    return policy


def _batching(batching: dict[str, Any]) -> dict[str, Any]:
    out = dict(batching)
    if "preferred_batch_size" in out:
        out["preferred_batch_sizes"] = out.pop("preferred_batch_size")
    if "max_queue_delay_microseconds" in out:
        out["max_queue_delay_us"] = out.pop("max_queue_delay_microseconds")
    return out


def translate(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """This service's config from one that may use Triton's spelling."""
    out = dict(doc)
    if out.get("name") not in (None, "", name):
        raise InvalidModel(f"the config names model '{out['name']}', not '{name}'")
    platform = out.get("platform") or out.get("backend")
    if platform and platform not in PLATFORMS:
        raise InvalidModel(f"platform '{platform}' is not served here (only ONNX models are)")
    filename = out.get("default_model_filename")
    if filename not in (None, "", "model.onnx"):
        raise InvalidModel("default_model_filename must be model.onnx")
    image = _image_input(out)
    if image is not None:
        preprocess = out.get("preprocess") or {}
        if not isinstance(preprocess, dict):
            raise InvalidModel("preprocess must be an object")
        for key, value in image.items():
            if preprocess.get(key, value) != value:
                raise InvalidModel(
                    f"the input format says {key} {value} but preprocess.{key} is {preprocess[key]}"
                )
        out["preprocess"] = {**preprocess, **image}
    for key in _DROPPED:
        out.pop(key, None)
    if "instance_group" in out:
        out["instances"] = _instances(out.pop("instance_group"))
    if isinstance(out.get("version_policy"), dict):
        out["version_policy"] = _version_policy(out["version_policy"])
    if isinstance(out.get("dynamic_batching"), dict):
        out["dynamic_batching"] = _batching(out["dynamic_batching"])
    return out


def config_from_load(text: str, name: str) -> bytes:
    """The config.json bytes for a load request's ``parameters.config`` (422 if invalid)."""
    doc = config_object(text, "parameters.config")
    try:
        translated = translate(doc, name)
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidModel(f"parameters.config is not a usable model config: {exc}") from None
    data = orjson.dumps(translated, option=orjson.OPT_INDENT_2)
    parse_config(data)
    return data
