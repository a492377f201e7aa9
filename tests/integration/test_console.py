"""The web console in a real browser against a real server.

Headless Chromium (Debian's package, driven by Playwright) loads /console from a server
process, uploads a model through the page with the upload throttled so that its progress
events show, predicts docs/seven.png, reads errors and labels as text, watches the latency
panel fill, deletes the version, and checks contrast, labels, keyboard reach and the phone
layout. Every page must run without a script error, a dialog or a Content-Security-Policy
violation. The browser tests skip without a Chromium; CI installs one (.ci/run).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest

from tests.conftest import ROOT, SAMPLE_MODELS
from tests.integration import browser as chrome
from tests.integration.browser import ConsoleTab, expect
from tests.integration.conftest import MANAGEMENT_KEY
from tests.onnx_models import add_mul, write_model
from tests.server import RunningServer

SEVEN = ROOT / "docs" / "seven.png"
XSS = "<img src=x onerror=alert(1)>"
# labels.txt of the uploaded digits model: a label that is markup, at index 8.
LABELS = [str(d) for d in range(8)] + [XSS, "9"]
AUTH = {"authorization": f"Bearer {MANAGEMENT_KEY}"}
DESKTOP = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}
# The uploaded model carries this much padding in its doc string, and the upload is throttled
# to this rate in the browser, so that it takes long enough for progress events to show.
PADDING_BYTES = 600 * 1024
UPLOAD_BYTES_PER_SECOND = 400 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(SAMPLE_MODELS / "digits", root / "digits")
    write_model(root, "adder", add_mul(width=3))
    write_model(root, "unloadable", b"not an ONNX model")
    log = tmp_path_factory.mktemp("log") / "server.log"
    with RunningServer(
        root, env={"ONNX_SERVE_MANAGEMENT_API_KEY": MANAGEMENT_KEY}, log_path=log
    ) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chrome.chromium_path()
    if executable is None:
        pytest.skip("no Chromium here: apt-get install chromium (CI's .ci/run installs it)")
    with chrome.launched(executable) as launched:
        yield launched


@pytest.fixture
def tab(browser: Any, server: RunningServer) -> Iterator[ConsoleTab]:
    opened = ConsoleTab(browser, server, DESKTOP)
    yield opened
    try:
        assert opened.problems() == []
    finally:
        opened.context.close()


def enter_key(page: Any) -> None:
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key-management", MANAGEMENT_KEY)
    page.click("#key-save")
    expect(page.locator("#key-dialog")).to_be_hidden()


def upload(page: Any, model: Path, name: str, labels: Path | None, config: Path | None) -> None:
    page.set_input_files("#upload-file", str(model))
    page.fill("#upload-name", name)
    if labels is not None:
        page.set_input_files("#upload-labels", str(labels))
    if config is not None:
        page.set_input_files("#upload-config", str(config))
    page.click("#upload-submit")


def version_card(page: Any, name: str) -> Any:
    return page.locator(f"#models-list article[data-model='{name}']")


# ---- the routes, without a browser -------------------------------------------------------


def test_root_is_liveness_for_clients_and_the_console_for_browsers(server: RunningServer) -> None:
    r = httpx.get(server.url + "/")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "alive"}
    assert r.headers["vary"] == "Accept"
    html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    r = httpx.get(server.url + "/", headers={"accept": html})
    assert r.status_code == 307
    assert httpx.URL(server.url + "/").join(r.headers["location"]).path == "/console"
    r = httpx.get(server.url + "/console/", follow_redirects=True)
    assert r.status_code == 200 and r.url.path == "/console", r.text
    assert r.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ],
)
def test_console_files_carry_a_strict_policy(
    server: RunningServer, path: str, media_type: str
) -> None:
    r = httpx.get(server.url + path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(media_type)
    policy = r.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe" not in policy
    assert "frame-ancestors 'none'" in policy
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    ["/console/nothing.js", "/console/%2e%2e%2fmain.py", "/console/..%2f..%2fpyproject.toml"],
)
def test_only_console_files_are_served(server: RunningServer, path: str) -> None:
    r = httpx.get(server.url + path)
    assert r.status_code == 404, r.text
    assert "error" in r.json()


# ---- in the browser ----------------------------------------------------------------------


def test_upload_with_progress_then_predict_the_seven_and_delete(
    tab: ConsoleTab, server: RunningServer, tmp_path: Path
) -> None:
    tab.throttle_uploads(UPLOAD_BYTES_PER_SECOND)
    page = tab.open("/?refresh=1")
    assert page.url.endswith("/console")
    # Without a key the page lists what is served and offers to take the key.
    expect(version_card(page, "digits")).to_contain_text("READY")
    expect(page.locator("#models-note")).to_contain_text("Enter the management key")

    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{label}\n" for label in LABELS))
    digits = onnx.load(SAMPLE_MODELS / "digits" / "1" / "model.onnx")
    digits.doc_string = "digits, padded for a visible upload " + "." * PADDING_BYTES
    model = tmp_path / "seven.onnx"
    onnx.save(digits, model)
    upload(page, model, "seven", labels, SAMPLE_MODELS / "digits" / "config.json")
    enter_key(page)
    status = page.locator("#upload-status")
    expect(status.locator(".success")).to_contain_text("seven version 1: READY", timeout=30000)
    seen: list[int] = page.evaluate("window.__progress")
    # The throttled upload reports its progress as it goes, up to 100%.
    assert seen[-1] == 100, seen
    assert len([v for v in seen if 0 < v < 100]) >= 3, seen
    assert seen == sorted(seen), seen
    expect(page.locator("#upload-percent")).to_contain_text("100%")
    # The model turns READY in the list, now the full one from GET /models.
    expect(version_card(page, "seven")).to_contain_text("READY")
    expect(page.locator("#models-note")).to_be_hidden()
    # The key is kept for this tab only: not in a cookie, local storage or the address.
    kept = page.evaluate(
        "[sessionStorage.getItem('onnx-serve.management-key'), document.cookie, "
        "localStorage.length, location.href]"
    )
    assert kept[:3] == [MANAGEMENT_KEY, "", 0] and MANAGEMENT_KEY not in kept[3]

    page.select_option("#try-model", "seven/1")
    expect(page.locator("#try-image")).to_be_visible()
    page.set_input_files("#image-file", str(SEVEN))
    page.fill("#image-top-k", "10")
    page.click("#image-submit")
    rows = page.locator("#try-result ol.labels li")
    expect(rows).to_have_count(10)
    assert rows.nth(0).locator(".label").text_content() == "7"
    assert float(rows.nth(0).locator(".score").text_content()) > 0.9
    expect(page.locator("#try-result")).to_contain_text("answered in")
    # The label that is markup shows as its text, and no element came of it.
    shown = page.locator("#try-result .label").all_text_contents()
    assert XSS in shown
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("#try-result img").count() == 0

    tab_screenshots(tab, tmp_path)

    card = version_card(page, "seven")
    card.locator("summary").click()
    expect(card).to_contain_text("CPUExecutionProvider")
    expect(card.locator("table").first).to_contain_text("image")
    card.get_by_role("button", name="Delete version 1").click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.click("#confirm-yes")
    expect(page.locator("#models-message")).to_contain_text("Deleted version 1 of seven.")
    expect(version_card(page, "seven")).not_to_contain_text("READY")
    r = httpx.get(server.url + "/v2/models/seven")
    assert r.status_code == 404, r.text


def tab_screenshots(tab: ConsoleTab, tmp_path: Path) -> None:
    """The documentation's pictures: the desktop at 1280x720 and a phone's width."""
    page = tab.page
    page.evaluate("window.scrollTo(0, 0)")
    desktop = chrome.save_screenshot(page.screenshot(), "console-desktop.png", tmp_path)
    page.set_viewport_size(PHONE)
    page.locator("#try").scroll_into_view_if_needed()
    phone = chrome.save_screenshot(page.screenshot(), "console-phone.png", tmp_path)
    page.set_viewport_size(DESKTOP)
    from PIL import Image

    with Image.open(desktop) as image:
        assert image.size == (DESKTOP["width"], DESKTOP["height"])
    with Image.open(phone) as image:
        assert image.size == (PHONE["width"], PHONE["height"])


def test_errors_show_the_servers_message_as_text(
    tab: ConsoleTab, server: RunningServer, tmp_path: Path
) -> None:
    page = tab.open()
    # Without the key the page cannot know of a version that failed to load; with it, it
    # shows the version and why, as GET /models says.
    expect(version_card(page, "digits")).to_be_visible()
    assert version_card(page, "unloadable").count() == 0
    page.click("#key-set")
    enter_key(page)
    failed = version_card(page, "unloadable")
    expect(failed.locator(".badge").first).to_have_text("UNAVAILABLE")
    listed = httpx.get(server.url + "/models", headers=AUTH).json()["models"]
    reason = next(m for m in listed if m["name"] == "unloadable")["reason"]
    assert reason and failed.locator(".reason").first.text_content() == reason
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"<img src=x onerror=alert(2)>": 1}))
    model = SAMPLE_MODELS / "digits" / "1" / "model.onnx"
    upload(page, model, "refused", None, config)
    # The same upload straight to the server: the page must show its message as it is.
    direct = httpx.post(
        server.url + "/models",
        headers=AUTH,
        data={"name": "refused", "config": config.read_text()},
        files={"file": ("model.onnx", model.read_bytes())},
    )
    assert direct.status_code == 422, direct.text
    error = page.locator("#upload-status .error")
    expect(error).to_contain_text("(422)")
    assert error.locator(".message").text_content() == direct.json()["error"]
    assert page.locator("img[src='x']").count() == 0

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    page.set_input_files("#upload-config", [])
    upload(page, broken, "broken", None, None)
    expect(error).to_contain_text("not an ONNX model")

    page.select_option("#try-model", "digits/1")
    page.set_input_files("#image-file", str(broken))
    page.click("#image-submit")
    refused = page.locator("#try-result .error .message")
    expect(refused).not_to_be_empty()
    direct = httpx.post(
        server.url + "/predict", data={"model": "digits"}, files={"file": broken.read_bytes()}
    )
    assert direct.status_code in (400, 415), direct.text
    assert refused.text_content() == direct.json()["error"]


def test_tensor_model_gets_a_valid_example_and_its_answer(
    tab: ConsoleTab, server: RunningServer
) -> None:
    page = tab.open()
    page.select_option("#try-model", "adder/1")
    expect(page.locator("#try-tensors")).to_be_visible()
    assert page.locator("#try-mode").is_hidden()
    example = json.loads(page.input_value("#tensor-request"))
    assert [(i["name"], i["shape"], i["datatype"]) for i in example["inputs"]] == [
        ("a", [1, 3], "FP32"),
        ("b", [1, 3], "FP32"),
    ]
    request = {
        "inputs": [
            {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
            {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [10, 20, 30]},
        ]
    }
    page.fill("#tensor-request", json.dumps(request))
    page.click("#tensor-submit")
    answer = page.locator("#try-result pre.answer")
    expect(answer).to_contain_text("product")
    shown = json.loads(answer.text_content())
    outputs = {o["name"]: o["data"] for o in shown["outputs"]}
    assert outputs == {"sum": [11, 22, 33], "product": [10, 40, 90]}
    direct = httpx.post(server.url + "/v2/models/adder/versions/1/infer", json=request)
    assert shown == direct.json()

    page.click("#tensor-reset")
    page.fill("#tensor-request", '{"inputs": [')
    page.click("#tensor-submit")
    expect(page.locator("#try-result .error")).to_contain_text("not valid JSON")


def test_latency_panel_shows_rate_and_quantiles(
    tab: ConsoleTab, server: RunningServer, tmp_path: Path
) -> None:
    page = tab.open()
    expect(page.locator("#latency-list article[data-model='digits']")).to_be_visible()
    with httpx.Client(base_url=server.url) as client:
        for _ in range(30):
            r = client.post(
                "/predict",
                data={"model": "digits"},
                files={"file": ("seven.png", SEVEN.read_bytes(), "image/png")},
            )
            assert r.status_code == 200, r.text
    chart = page.locator("#latency-list article[data-model='digits'][data-version='1']")
    rate = chart.locator("[data-figure='rate']")
    page.wait_for_function(
        "el => Number(el.dataset.value) > 0", arg=rate.element_handle(timeout=15000)
    )
    p50 = float(chart.locator("[data-figure='p50']").get_attribute("data-value"))
    p99 = float(chart.locator("[data-figure='p99']").get_attribute("data-value"))
    assert 0 < p50 <= p99 <= 30, (p50, p99)
    assert chart.locator("svg circle.p50").count() >= 1
    assert chart.locator("svg circle.p99").count() >= 1
    expect(chart).to_contain_text("requests in all")
    shot = chrome.save_screenshot(chart.screenshot(), "console-latency.png", tmp_path)
    assert shot.stat().st_size > 0


def test_management_disabled_says_how_to_enable_it(browser: Any, tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "adder", add_mul(width=3))
    inference_key = "test-inference-key"
    env = {"ONNX_SERVE_INFERENCE_API_KEY": inference_key}
    with RunningServer(root, env=env, log_path=tmp_path / "server.log") as closed:
        page_ = ConsoleTab(browser, closed, DESKTOP)
        try:
            page = page_.open()
            box = page.locator("#upload-disabled")
            expect(box).to_be_visible()
            expect(box).to_contain_text("ONNX_SERVE_MANAGEMENT_API_KEY")
            said = httpx.get(closed.url + "/models").json()["error"]
            assert page.locator("#upload-disabled-text").text_content() == said
            expect(page.locator("#models-note")).to_contain_text("management is disabled")
            # Inference has its own key here: the page asks for it and sends it.
            page.select_option("#try-model", "adder/1")
            page.click("#tensor-submit")
            expect(page.locator("#key-dialog")).to_be_visible()
            expect(page.locator("#key-dialog-message")).to_contain_text("needs an API key")
            page.fill("#key-inference", inference_key)
            page.click("#key-save")
            expect(page.locator("#try-result pre.answer")).to_contain_text('"sum"')
            kept = page.evaluate("sessionStorage.getItem('onnx-serve.inference-key')")
            assert kept == inference_key
            assert page_.problems() == []
        finally:
            page_.context.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_readable_labelled_and_keyboard_reachable(
    browser: Any, server: RunningServer, viewport: dict[str, int]
) -> None:
    opened = ConsoleTab(browser, server, viewport)
    try:
        page = opened.open()
        expect(page.locator("#latency-list article").first).to_be_visible()
        version_card(page, "digits").locator("summary").click()
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        assert page.evaluate(chrome.UNLABELLED_CONTROLS_JS) == []
        assert page.evaluate(chrome.CONTRAST_FAILURES_JS) == []
        controls = page.evaluate(chrome.MARK_CONTROLS_JS)
        reached = set()
        for _ in range(controls + 5):
            page.keyboard.press("Tab")
            mark = chrome.focused_mark(page)
            if mark is not None:
                reached.add(int(mark))
        assert reached == set(range(controls))
        assert opened.problems() == []
    finally:
        opened.context.close()


def test_quantiles_and_rates_from_metrics_text(tab: ConsoleTab) -> None:
    page = tab.open()
    # Two readings of one model's histogram, 10 s apart: 20 requests between them, half of
    # them under 0.25 s. Prometheus's histogram_quantile interpolates within the bucket.
    figures = page.evaluate(
        """async () => {
          const { reading, between, quantile } = await import("./console/prometheus.js");
          const text = (counts, failed) => [
            '# TYPE onnx_serve_request_duration_seconds histogram',
            ...[["0.1", counts[0]], ["0.25", counts[1]], ["0.5", counts[2]], ["+Inf", counts[3]]]
              .map(([le, n]) => `onnx_serve_request_duration_seconds_bucket{le="${le}",` +
                `model="a\\\\"b",version="1"} ${n}`),
            `onnx_serve_request_duration_seconds_count{model="a\\\\"b",version="1"} ${counts[3]}`,
            `onnx_serve_request_failure_total{model="a\\\\"b",version="1",reason="x"} ${failed}`,
          ].join("\\n");
          const first = reading(text([5, 5, 5, 5], 1), 0);
          const second = reading(text([5, 15, 25, 25], 3), 10000);
          const restarted = reading(text([0, 2, 2, 2], 0), 20000);
          // The same requests split over two protocols read as their sum.
          const over = (protocol, counts) => text(counts, 0).replaceAll(
            'version="1"', `version="1",protocol="${protocol}"`);
          const split = reading(
            [over("rest", [5, 5, 5, 5]), over("grpc", [0, 10, 20, 20])].join("\\n"), 10000);
          return {
            keys: [...second.series.keys()],
            window: between(first, second, 'a"b/1'),
            split: between(first, split, 'a"b/1'),
            restarted: between(second, restarted, 'a"b/1'),
            overflow: quantile(0.99, [[0.1, 1], [0.5, 1], [Infinity, 10]]),
            empty: quantile(0.5, [[0.1, 0], [Infinity, 0]]),
          };
        }"""
    )
    assert figures["keys"] == ['a"b/1']
    assert figures["window"] == {
        "seconds": 10,
        "requests": 20,
        "failures": 2,
        "rate": 2.0,
        "p50": pytest.approx(0.25),
        "p99": pytest.approx(0.25 + 0.25 * (19.8 - 10) / 10),
    }
    assert figures["split"] == {**figures["window"], "failures": 0}
    # A count that went down is a restart: the new reading counts from zero.
    assert figures["restarted"]["requests"] == 2
    assert figures["restarted"]["p50"] == pytest.approx(0.1 + 0.15 * 1 / 2)
    assert figures["overflow"] == 0.5
    assert figures["empty"] is None
