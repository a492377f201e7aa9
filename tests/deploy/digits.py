"""Requests for the bundled digits model, made from scikit-learn's bundled digits."""

from __future__ import annotations

import numpy as np


def held_digits(count: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` of scikit-learn's bundled digits as the model's input, and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[:count] / 16.0).astype(np.float32).reshape(count, 1, 8, 8)
    return images, digits.target[:count]


def digits_request(count: int = 16) -> tuple[dict[str, object], np.ndarray]:
    """A v2 JSON request for :func:`held_digits`, and their labels."""
    images, labels = held_digits(count)
    tensor = {
        "name": "image",
        "shape": list(images.shape),
        "datatype": "FP32",
        "data": images.ravel().tolist(),
    }
    return {"inputs": [tensor]}, labels


def accuracy(response: dict[str, object], labels: np.ndarray) -> float:
    """The share of ``labels`` that a v2 response's ``probabilities`` output ranks first."""
    outputs = {o["name"]: o for o in response["outputs"]}  # type: ignore[attr-defined]
    probabilities = np.array(outputs["probabilities"]["data"], np.float32).reshape(-1, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    return float((probabilities.argmax(axis=1) == labels).mean())
