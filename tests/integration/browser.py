"""Headless Chromium (Debian's ``chromium``) driven by Playwright, and page checks in the browser.

Nothing here downloads a browser: Playwright is pointed at the system's executable.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image
from playwright.sync_api import expect as playwright_expect
from playwright.sync_api import sync_playwright

from tests.server import RunningServer

CHROMIUM_NAMES = ("chromium", "chromium-browser")
# As root Chromium needs --no-sandbox; the rest keeps it from reaching out to the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
]
#: Where the documentation's screenshots go when set (``docs`` regenerates them).
SCREENSHOTS_ENV = "ONNX_SERVE_CONSOLE_SCREENSHOTS"


def chromium_path() -> str | None:
    """The system's Chromium executable (``CHROMIUM`` overrides), or None."""
    given = os.environ.get("CHROMIUM")
    if given:
        return given
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def save_screenshot(png: bytes, name: str, tmp: Path) -> Path:
    """Write a screenshot to ``tmp`` (and, reduced to a small palette, to the docs folder
    named by ``ONNX_SERVE_CONSOLE_SCREENSHOTS`` when set); returns the ``tmp`` copy."""
    path = tmp / name
    path.write_bytes(png)
    docs = os.environ.get(SCREENSHOTS_ENV)
    if docs:
        with Image.open(path) as image:
            small = image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
            small.save(Path(docs) / name, optimize=True)
    return path


# Every visible element's own text: its colour against the background it sits on, by the WCAG
# 2.x formula. Backgrounds are composited up the ancestors; disabled controls are exempt.
CONTRAST_FAILURES_JS = """
() => {
  const rgba = (text) => {
    const m = text.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return [0, 0, 0, 0];
    const parts = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
    return [parts[0], parts[1], parts[2], parts.length > 3 ? parts[3] : 1];
  };
  const over = (top, below) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + below[i] * (1 - a)).concat([1]);
  };
  const background = (el) => {
    const layers = [];
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const color = rgba(getComputedStyle(node).backgroundColor);
      if (color[3] > 0) layers.push(color);
      if (color[3] >= 1) break;
    }
    let result = [255, 255, 255, 1];
    for (const layer of layers.reverse()) result = over(layer, result);
    return result;
  };
  const luminance = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => {
      const s = v / 255;
      return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const failures = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.closest("[hidden], dialog:not([open])") || el.getClientRects().length === 0) {
      continue;
    }
    if (el.closest(":disabled")) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden") continue;
    const inSvg = el instanceof SVGElement;
    const fg = rgba(inSvg ? style.fill : style.color);
    const bg = background(inSvg ? el.closest("svg").parentElement : el);
    const text = over(fg, bg);
    const [hi, lo] = [luminance(text), luminance(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      failures.push(`${el.tagName.toLowerCase()} "${el.textContent.trim().slice(0, 40)}" ` +
        `${ratio.toFixed(2)}:1`);
    }
  }
  return failures;
}
"""

# Every visible control that has no accessible name (label, aria-label or text).
UNLABELLED_CONTROLS_JS = """
() => [...document.querySelectorAll("input, select, textarea, button, summary, a[href]")]
  .filter((el) => el.getClientRects().length > 0 && !el.closest("[hidden]"))
  .filter((el) => {
    if (el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")) return false;
    if (el.labels && el.labels.length > 0) return false;
    return !["BUTTON", "SUMMARY", "A"].includes(el.tagName) || !el.textContent.trim();
  })
  .map((el) => el.outerHTML.slice(0, 80))
"""

# Mark every visible, enabled control so that the keyboard walk can tell which it reached.
MARK_CONTROLS_JS = """
() => {
  const controls = [...document.querySelectorAll(
    "input, select, textarea, button, summary, a[href], [tabindex]")]
    .filter((el) => el.getClientRects().length > 0 && !el.closest("[hidden], dialog")
      && !el.disabled && el.tabIndex >= 0)
    // Tab stops at the checked radio of a group; the arrow keys move within it.
    .filter((el) => el.type !== "radio" || el.checked);
  controls.forEach((el, i) => { el.dataset.walk = String(i); });
  return controls.length;
}
"""


def focused_mark(page: Any) -> str | None:
    mark: str | None = page.evaluate("() => document.activeElement?.dataset?.walk ?? null")
    return mark


@contextmanager
def launched(executable: str) -> Iterator[Any]:
    """Headless Chromium from ``executable`` (a fresh profile in a temporary folder)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def expect(locator: Any) -> Any:
    """Playwright's waiting assertions on ``locator``."""
    return playwright_expect(locator)


# Run in the page before its own scripts: record Content-Security-Policy violations and every
# value the upload progress bar takes.
WATCH_JS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(`${e.violatedDirective}: ${e.blockedURI}`));
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("upload-progress");
  new MutationObserver(() => window.__progress.push(bar.value))
    .observe(bar, { attributes: true, attributeFilter: ["value"] });
});
"""


class ConsoleTab:
    """One browser tab on the console, with the problems it ran into."""

    def __init__(self, browser: Any, server: RunningServer, viewport: dict[str, int]) -> None:
        self.context = browser.new_context(viewport=viewport)
        self.context.add_init_script(WATCH_JS)
        self.page = self.context.new_page()
        self.server = server
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, path: str = "/console?refresh=1") -> Any:
        self.page.goto(self.server.url + path)
        self.page.wait_for_selector("#models-list article")
        return self.page

    def problems(self) -> list[str]:
        violations: list[str] = self.page.evaluate("window.__violations")
        return self.errors + [f"dialog: {d}" for d in self.dialogs] + violations

    def throttle_uploads(self, bytes_per_second: int) -> None:
        cdp = self.context.new_cdp_session(self.page)
        cdp.send("Network.enable")
        cdp.send(
            "Network.emulateNetworkConditions",
            {
                "offline": False,
                "latency": 0,
                "downloadThroughput": -1,
                "uploadThroughput": bytes_per_second,
            },
        )
