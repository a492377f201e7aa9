"""Tables between v2 datatype names, numpy dtypes and ONNX tensor element types."""

from __future__ import annotations

import numpy as np

# v2 name -> numpy dtype; BYTES are variable-length strings held as object arrays.
V2_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

NUMPY_TO_V2: dict[np.dtype[np.generic], str] = {dtype: name for name, dtype in V2_TO_NUMPY.items()}

# onnxruntime's type strings for inputs and outputs, e.g. "tensor(float)".
ORT_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# Triton's model-config names (TYPE_FP32, ...) for GET /v2/models/{m}/config.
V2_TO_TRITON_CONFIG: dict[str, str] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


def numpy_dtype(datatype: str) -> np.dtype[np.generic] | None:
    """The numpy dtype for a v2 datatype name, or None when the name is unknown."""
    return V2_TO_NUMPY.get(datatype)


def v2_datatype(dtype: np.dtype[np.generic]) -> str | None:
    """The v2 datatype name of a numpy dtype; unicode and bytes arrays are BYTES."""
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    return NUMPY_TO_V2.get(dtype)
