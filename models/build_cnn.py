"""Train and write the bundled convolutional sample: ``python models/build_cnn.py``.

digits_cnn: a small CNN trained on scikit-learn's 8x8 digits shown as 32x32 pictures (each
pixel a 4x4 block, as ``docs/seven.png``), shifted by up to 3 pixels for training. The same
400 digits as the ``digits`` sample are held out (``build_samples.digits_split``). Input
``image`` [N,1,32,32] FP32 in [0, 1] where 1 is ink; outputs ``logits`` and ``probabilities``
[N,10]. Four 3x3 convolutions (32, 64, 128, 128 channels; 2x2 max-pools after the last three)
and a linear layer over the 4x4 feature maps: about 47 million multiply-adds a picture, so
that the convolutions, not the serving, are what a request costs (see docs/optimization.md).

Training needs PyTorch (``pip install torch==2.13.0``, CPU), used for training only: the
graph is written with ``onnx.helper`` from the trained weights, so the file does not depend
on an exporter. The script is deterministic on one CPU thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from build_samples import OPSET, digits_split
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
NAME = "digits_cnn"
SIZE = 32
SCALE = SIZE // 8
CHANNELS = (32, 64, 128, 128)
POOL_AFTER = (1, 2, 3)  # convolutions followed by a 2x2 max-pool
MAX_SHIFT = 3
EPOCHS = 15
FEATURE_SIDE = SIZE // 2 ** len(POOL_AFTER)

CONFIG: dict[str, Any] = {
    "preprocess": {
        "input": "image",
        "color": "L",
        "size": [SIZE, SIZE],
        "resize": "stretch",
        "resample": "box",
        "scale": 1 / 255,
        "invert": "auto",
    },
    "postprocess": {"output": "probabilities", "softmax": False, "top_k": 5},
}


def pictures(images: np.ndarray) -> np.ndarray:
    """sklearn's 8x8 digits (0..16) as [N,1,32,32] in [0, 1], each pixel a 4x4 block."""
    ink = images.astype(np.float32) / 16.0
    return np.kron(ink, np.ones((SCALE, SCALE), np.float32))[:, np.newaxis]


def shifted(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each picture moved by up to MAX_SHIFT pixels each way, the border filled with 0."""
    out = np.zeros_like(batch)
    padded = np.pad(batch, ((0, 0), (0, 0), (MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT)))
    for i, (dy, dx) in enumerate(rng.integers(0, 2 * MAX_SHIFT + 1, (len(batch), 2))):
        out[i] = padded[i, :, dy : dy + SIZE, dx : dx + SIZE]
    return out


def train() -> list[np.ndarray]:
    """Train the network; returns its weights in ONNX order (conv w, b, ..., fc w, b)."""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(1)
    digits = load_digits()
    train_idx, held = digits_split(digits.target)
    x_all = pictures(digits.images)
    y_all = digits.target.astype(np.int64)
    layers: list[nn.Module] = []
    previous = 1
    for i, channels in enumerate(CHANNELS):
        layers += [nn.Conv2d(previous, channels, 3, padding=1), nn.ReLU()]
        if i in POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
        previous = channels
    layers += [nn.Flatten(), nn.Linear(previous * FEATURE_SIDE**2, 10)]
    net = nn.Sequential(*layers)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS)
    rng = np.random.default_rng(0)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(EPOCHS):
        net.train()
        order = rng.permutation(train_idx)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            x = torch.from_numpy(shifted(x_all[batch], rng))
            loss = loss_fn(net(x), torch.from_numpy(y_all[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        net.eval()
        with torch.no_grad():
            predicted = net(torch.from_numpy(x_all[held])).argmax(1).numpy()
        accuracy = float((predicted == y_all[held]).mean())
        print(
            f"epoch {epoch + 1}: loss {loss.item():.4f}, held-out {accuracy:.4f}", file=sys.stderr
        )
    return [p.detach().numpy().astype(np.float32) for p in net.parameters()]


def cnn_model(weights: list[np.ndarray]) -> onnx.ModelProto:
    """The trained network as an ONNX graph."""
    nodes = []
    initializers = []
    previous = "image"
    for i in range(len(CHANNELS)):
        w, b = weights[2 * i], weights[2 * i + 1]
        initializers += [
            numpy_helper.from_array(w, f"conv{i}.w"),
            numpy_helper.from_array(b, f"conv{i}.b"),
        ]
        nodes += [
            helper.make_node(
                "Conv", [previous, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}"], pads=[1, 1, 1, 1]
            ),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]),
        ]
        previous = f"relu{i}"
        if i in POOL_AFTER:
            nodes.append(
                helper.make_node(
                    "MaxPool", [previous], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            previous = f"pool{i}"
    fc_w, fc_b = weights[-2], weights[-1]
    initializers += [numpy_helper.from_array(fc_w, "fc.w"), numpy_helper.from_array(fc_b, "fc.b")]
    nodes += [
        helper.make_node("Flatten", [previous], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        NAME,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnx-serve"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    model = cnn_model(train())
    target = HERE / NAME / "1" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, target)
    (HERE / NAME / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    (HERE / NAME / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
