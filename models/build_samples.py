"""Rebuild the bundled sample models reproducibly: ``python models/build_samples.py``.

digits: an MLP trained on scikit-learn's bundled 8x8 digits. 400 samples are held out for
the tests: ``sklearn.model_selection.train_test_split(range(1797), test_size=400,
random_state=0, stratify=target)`` (see ``digits_split``). Input ``image`` [N,1,8,8]
FP32 in [0, 1] where 1 is ink (sklearn's 0..16 divided by 16); outputs ``logits`` and
``probabilities`` [N,10]. Its config.json turns 8-bit grayscale images of a digit (either
polarity) into that input: box-resize to 8x8, scale by 1/255, invert when the border is light.

colors: an untrained nearest-colour classifier over an RGB image. Input ``image``
[N,3,224,224] FP32 normalised with ImageNet's mean and std; the mean colour of the image is
scored against one prototype per class (``logits`` = 2 p.x - |p|^2 in normalised units, times
a sharpness), with ``probabilities`` its softmax. It exercises the colour, resize (shorter side
plus centre crop) and normalisation paths of image preprocessing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
HELD_OUT = 400
OPSET = 17

DIGITS_CONFIG: dict[str, Any] = {
    "preprocess": {
        "input": "image",
        "color": "L",
        "size": [8, 8],
        "resize": "stretch",
        "resample": "box",
        "scale": 1 / 255,
        "invert": "auto",
    },
    "postprocess": {"output": "probabilities", "softmax": False, "top_k": 5},
}

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
COLOR_SIZE = 224
COLOR_SHARPNESS = 4.0
#: Class name and its prototype colour (R, G, B in 0..1).
COLORS: list[tuple[str, tuple[float, float, float]]] = [
    ("red", (1.0, 0.0, 0.0)),
    ("green", (0.0, 1.0, 0.0)),
    ("blue", (0.0, 0.0, 1.0)),
    ("yellow", (1.0, 1.0, 0.0)),
    ("cyan", (0.0, 1.0, 1.0)),
    ("magenta", (1.0, 0.0, 1.0)),
    ("white", (1.0, 1.0, 1.0)),
    ("gray", (0.5, 0.5, 0.5)),
    ("black", (0.0, 0.0, 0.0)),
]
COLORS_CONFIG: dict[str, Any] = {
    "preprocess": {
        "color": "RGB",
        "resize": "shorter_side_crop",
        "resample": "bilinear",
        "crop_fraction": 0.875,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    },
    "postprocess": {"output": "logits", "softmax": True, "top_k": 3},
}


def digits_split(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and the held-out digits."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(target))
    train, held = train_test_split(indices, test_size=HELD_OUT, random_state=0, stratify=target)
    return train, held


def digits_model() -> onnx.ModelProto:
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    train, held = digits_split(digits.target)
    x = digits.data.astype(np.float32) / 16.0
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0, alpha=0.1)
    clf.fit(x[train], digits.target[train])
    accuracy = clf.score(x[held], digits.target[held])
    print(f"digits: held-out accuracy {accuracy:.4f}", file=sys.stderr)

    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["hidden_pre"]),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
        ],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnx-serve"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def colors_model() -> onnx.ModelProto:
    """Score the image's mean colour against each class prototype (no training)."""
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    prototypes = (np.array([rgb for _, rgb in COLORS]) - mean) / std  # normalised units
    weights = (COLOR_SHARPNESS * 2 * prototypes.T).astype(np.float32)  # [3, classes]
    bias = (-COLOR_SHARPNESS * (prototypes**2).sum(axis=1)).astype(np.float32)
    classes = len(COLORS)
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["mean_color"], axis=1),
        helper.make_node("Gemm", ["mean_color", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "colors",
        [
            helper.make_tensor_value_info(
                "image", TensorProto.FLOAT, ["N", 3, COLOR_SIZE, COLOR_SIZE]
            )
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
        ],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnx-serve"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_sample(
    name: str, model: onnx.ModelProto, labels: list[str], config: dict[str, Any]
) -> None:
    target = HERE / name / "1" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, target)
    (HERE / name / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    (HERE / name / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {target}", file=sys.stderr)


def write_example_seven() -> None:
    """docs/seven.png: the first held-out 7, saved as a person would (32x32, dark on light)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    _, held = digits_split(digits.target)
    index = next(i for i in held if digits.target[i] == 7)
    ink = np.rint(digits.images[index] * 255 / 16).astype(np.uint8)
    target = HERE.parent / "docs" / "seven.png"
    target.parent.mkdir(exist_ok=True)
    Image.fromarray(np.kron(255 - ink, np.ones((4, 4), np.uint8))).save(target, optimize=True)
    print(f"wrote {target}", file=sys.stderr)


def main() -> None:
    write_sample("digits", digits_model(), [str(d) for d in range(10)], DIGITS_CONFIG)
    write_sample("colors", colors_model(), [name for name, _ in COLORS], COLORS_CONFIG)
    write_example_seven()


if __name__ == "__main__":
    main()
