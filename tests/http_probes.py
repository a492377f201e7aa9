"""Helpers for driving a live server: metric reads, polling, and half-sent requests."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


def metric_values(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``GET /metrics`` keyed by name and labels."""
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of ``GET /metrics``; 0 when the series does not exist yet."""
    return metric_values(url).get((name, frozenset(labels.items())), 0.0)


def wait_for(probe: Callable[[], T], what: str = "", timeout: float = 30.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds.

    The timeout only turns a hang into a failure: nothing asserts how fast the state came.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe} (last: {value!r})")
        time.sleep(0.05)


class HeldRequest:
    """A POST whose headers and first part of the body are sent; the rest on ``finish``.

    The server has the request in flight (reading its body) until the client finishes it,
    which lets a test act while a request is certainly in progress, with no sleeps.
    """

    def __init__(
        self, host_port: str, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        host, port = host_port.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self.body = body
        self.connection.putrequest("POST", path)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.connection.putheader(name, value)
        self.connection.endheaders()
        self.split = len(body) // 2
        self.connection.send(body[: self.split])

    def finish(self) -> tuple[int, dict[str, str], bytes]:
        """Send the rest of the body; return the status, headers and body of the answer."""
        self.connection.send(self.body[self.split :])
        response = self.connection.getresponse()
        data = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        self.connection.close()
        return response.status, headers, data

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> HeldRequest:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
