"""The TensorRT calibration table is made on the CPU; its use is tested where TensorRT is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

from app.optimize.transforms import CALIBRATION_TABLE, tensorrt_calibration_table
from tests.conftest import SAMPLE_MODELS
from tests.optimize.conftest import Digits


def test_the_calibration_table_holds_a_range_for_every_activation(
    tmp_path: Path, digits: Digits
) -> None:
    runs = [{"image": digits.large[digits.train[i : i + 50]]} for i in range(0, 200, 50)]
    model = SAMPLE_MODELS / "digits_cnn" / "1" / "model.onnx"
    assert tensorrt_calibration_table(model, tmp_path, runs) == CALIBRATION_TABLE
    assert sorted(p.name for p in tmp_path.iterdir()) == [CALIBRATION_TABLE]
    table = TrtTable.GetRootAsTrtTable((tmp_path / CALIBRATION_TABLE).read_bytes(), 0)
    ranges = {
        table.Dict(i).Key().decode(): float(table.Dict(i).Value())
        for i in range(table.DictLength())
    }
    assert {"image", "relu0", "pool3", "logits"} <= set(ranges)
    # The input's range is the largest ink value seen: 1.0.
    assert np.isclose(ranges["image"], 1.0)
