"""Compressed request bodies: what tritonclient.http sends with request_compression_algorithm."""

from __future__ import annotations

import gzip
import json
import zlib

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.http_probes import metric
from tests.server import RunningServer


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_compressed_requests_are_answered(
    sample_server: RunningServer,
    held_out_digits: tuple[np.ndarray, np.ndarray],
    algorithm: str,
    binary: bool,
) -> None:
    images, labels = held_out_digits
    client = httpclient.InferenceServerClient(sample_server.host_port)
    tensor = httpclient.InferInput("image", [20, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(images[:20], binary_data=binary)
    result = client.infer(
        "digits",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=binary)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    predicted = result.as_numpy("probabilities").argmax(axis=1)
    assert (predicted == labels[:20]).mean() >= 0.9


def json_body(rows: int = 1) -> bytes:
    tensor = {
        "name": "image",
        "datatype": "FP32",
        "shape": [rows, 1, 8, 8],
        "data": [0.5] * 64 * rows,
    }
    return json.dumps({"inputs": [tensor]}).encode()


def post(server: RunningServer, body: bytes, encoding: str) -> httpx.Response:
    return httpx.post(
        server.url + "/v2/models/digits/infer",
        content=body,
        headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
        timeout=60,
    )


def test_raw_deflate_and_identity_are_accepted(sample_server: RunningServer) -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    deflated = raw.compress(json_body()) + raw.flush()
    assert post(sample_server, deflated, "deflate").status_code == 200
    assert post(sample_server, json_body(), "identity").status_code == 200


def test_a_compression_bomb_is_refused_without_inflating_it(sample_server: RunningServer) -> None:
    # 100 MiB of zeros in about 100 KiB: over the 64 MiB body limit once decompressed.
    bomb = gzip.compress(b" " * (100 << 20), compresslevel=9)
    assert len(bomb) < 1 << 20
    r = post(sample_server, bomb, "gzip")
    assert r.status_code == 413, r.text
    assert "decompressed" in r.json()["error"]
    assert post(sample_server, gzip.compress(json_body()), "gzip").status_code == 200


@pytest.mark.parametrize(
    ("encoding", "body", "status", "words"),
    [
        ("br", b"anything", 415, "not supported"),
        ("gzip", b"not gzip at all", 400, "cannot be decompressed"),
        ("gzip", gzip.compress(json_body())[:-12], 400, "truncated"),
    ],
)
def test_bad_encodings_get_clear_errors(
    sample_server: RunningServer, encoding: str, body: bytes, status: int, words: str
) -> None:
    r = post(sample_server, body, encoding)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert metric(sample_server.url, "onnx_serve_requests_in_flight") == 0
