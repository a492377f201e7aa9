"""Rebuild the bundled sample models reproducibly: ``python models/build_samples.py``.

digits: an MLP trained on scikit-learn's bundled 8x8 digits. 400 samples are held out for
the tests: ``sklearn.model_selection.train_test_split(range(1797), test_size=400,
random_state=0, stratify=target)`` (see ``digits_split``). Input ``image`` [N,1,8,8]
FP32 in [0, 1] where 1 is ink (sklearn's 0..16 divided by 16); outputs ``logits`` and
``probabilities`` [N,10].
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
HELD_OUT = 400
OPSET = 17


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


def main() -> None:
    target = HERE / "digits" / "1" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(digits_model(), target)
    (HERE / "digits" / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
