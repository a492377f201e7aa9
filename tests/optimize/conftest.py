"""Samples for the optimisation tests: scikit-learn's digits, split as the sample models were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import load_sample_builder

CALIBRATION_ROWS = 400


class Digits:
    """The digits as the bundled models take them, and the split they were trained on."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.train, self.held = load_sample_builder().digits_split(digits.target)
        self.labels = digits.target
        ink = (digits.images / 16.0).astype(np.float32)
        self.small = ink[:, np.newaxis]  # the digits model: [N, 1, 8, 8]
        # The CNN's pictures: each pixel a 4x4 block (models/build_cnn.py, pictures()).
        self.large = np.kron(ink, np.ones((4, 4), np.float32))[:, np.newaxis]

    def samples(self, path: Path, images: np.ndarray) -> Path:
        """An .npz of training digits, then the held-out ones: the step calibrates on the
        first half and checks on the second, so its figures are for the held-out digits."""
        rows = np.concatenate([self.train[:CALIBRATION_ROWS], self.held])
        np.savez(path, image=images[rows])
        return path


@pytest.fixture(scope="session")
def digits() -> Digits:
    return Digits()
