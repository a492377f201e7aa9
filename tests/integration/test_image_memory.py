"""What images may cost a live server: memory by bit depth and orientation, pixels per
request, decodes at once, and memory given back.

The reported attacks: a 74 KiB 16-bit PNG of 6245x6245 (under the 40 Mpx limit) cost
+580 MB, four at once peaked at 2.3 GB and RSS stayed at 1.1 GB; 64 such images in one
request decoded for 7 s. Here they run against a real server whose RSS (peak and after)
is read from /proc.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE_MODELS
from tests.integration.attacks import MIB, LivenessProbe, peak_rss, reset_peak, rss
from tests.server import RunningServer

SIDE = 6245  # 39 Mpx: under the pixel limit


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(SAMPLE_MODELS / "digits", root / "digits")
    with RunningServer(root) as running:
        yield running


@pytest.fixture(scope="module")
def deep_png() -> bytes:
    """The reported image: 16-bit grey, 6245x6245, all zeros (75 kB of PNG)."""
    out = io.BytesIO()
    Image.fromarray(np.zeros((SIDE, SIDE), np.uint16)).save(out, "PNG")
    return out.getvalue()


def post(server: RunningServer, *images: bytes, kind: str = "image/png") -> httpx.Response:
    files = [("file", (f"{i}.png", data, kind)) for i, data in enumerate(images)]
    return httpx.post(server.url + "/predict", data={"model": "digits"}, files=files, timeout=120)


def test_a_deep_image_costs_its_own_size_and_is_given_back(
    server: RunningServer, deep_png: bytes
) -> None:
    reset_peak(server)
    before = rss(server)
    r = post(server, deep_png)
    assert r.status_code == 200, r.text
    # 78 MB of 16-bit pixels, resized before anything else: not +580 MB.
    assert peak_rss(server) - before < 180 * MIB, (before, peak_rss(server))
    assert rss(server) - before < 48 * MIB, (before, rss(server))


def test_decodes_at_once_are_bounded(server: RunningServer, deep_png: bytes) -> None:
    reset_peak(server)
    before = rss(server)
    with LivenessProbe(server) as probe, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: post(server, deep_png), range(6)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert not probe.failures, probe.failures
    assert probe.worst < 3.0, probe.worst
    # Two decodes at a time (the default), whatever the number of requests: not 2.3 GB.
    assert peak_rss(server) - before < 320 * MIB, (before, peak_rss(server))
    assert rss(server) - before < 48 * MIB, (before, rss(server))


def test_the_pixels_of_a_request_are_bounded(server: RunningServer, deep_png: bytes) -> None:
    with LivenessProbe(server) as probe:
        r = post(server, *[deep_png] * 64)
        assert r.status_code == 413, r.text
        assert "pixels" in r.json()["error"]
    assert probe.worst < 3.0, probe.worst


def test_memory_is_counted_by_mode_and_orientation(server: RunningServer) -> None:
    # 36 Mpx (under the pixel limit) of RGB turned by EXIF: 4 bytes a pixel, twice.
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(out, "PNG", exif=exif)
    r = post(server, out.getvalue())
    assert r.status_code == 413, r.text
    assert "once decoded" in r.json()["error"]


def test_svg_is_415_as_documented(server: RunningServer) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'
    as_svg = post(server, svg, kind="image/svg+xml")
    assert as_svg.status_code == 415, as_svg.text
    disguised = post(server, svg)
    assert disguised.status_code == 415, disguised.text
    in_json = httpx.post(
        server.url + "/predict",
        json={"model": "digits", "image": base64.b64encode(svg).decode()},
    )
    assert in_json.status_code == 415, in_json.text
