"""The console's shipped files: packaged, self-contained, and free of inline or parsed markup."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from html.parser import HTMLParser

import pytest

from app.api.routes.console import FILE_NAME, console_file
from tests.conftest import ROOT

CONSOLE = ROOT / "app" / "api" / "console"
FILES = sorted(p.name for p in CONSOLE.iterdir())
SCRIPTS = [name for name in FILES if name.endswith(".js")]
# Ways to turn text into markup or code: data from the server must never reach one.
MARKUP_SINKS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
    r"createContextualFragment|DOMParser|srcdoc"
)
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def test_the_package_ships_every_console_file() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["app.api"]
    for name in FILES:
        assert any(fnmatch(f"console/{name}", p) for p in patterns), f"{name} is not packaged"
        assert FILE_NAME.fullmatch(name), f"the console route would not serve {name}"
        assert console_file(name) == (CONSOLE / name).read_bytes()


@pytest.mark.parametrize(
    "name", ["../routes/console.py", "index.HTML", ".index.html", "index.html/", "a/b.js", ""]
)
def test_only_plain_console_file_names_are_read(name: str) -> None:
    assert console_file(name) is None


class PageReferences(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self._in_script = True
            if not named.get("src"):
                self.inline.append("<script> without src")
        for key, value in attrs:
            if key == "style" or key.startswith("on"):
                self.inline.append(f"{tag} {key}={value}")
            if key in ("src", "href") and value is not None:
                self.references.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline script text")


def test_the_page_has_no_inline_code_and_loads_only_shipped_files() -> None:
    page = PageReferences()
    page.feed((CONSOLE / "index.html").read_text())
    assert page.inline == []
    for reference in page.references:
        if reference.startswith("#") or reference == "data:,":
            continue
        folder, _, name = reference.partition("/")
        assert folder == "console" and name in FILES, reference


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_build_text_never_markup_and_stay_on_this_server(name: str) -> None:
    source = (CONSOLE / name).read_text()
    assert MARKUP_SINKS.search(source) is None
    outside = re.findall(r"\b(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"'`]*", source)
    assert [url for url in outside if url != SVG_NAMESPACE] == []
    for module in re.findall(r"from \"\./([^\"]+)\"", source):
        assert module in SCRIPTS, f"{name} imports {module}, which is not shipped"
