"""The batched access log: the lines logging's formatters would write, in whole-line chunks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re

import pytest

from app import access_log as access
from app.access_log import AccessLog, access_log_for
from app.log import ACCESS_LOGGER, TEXT_FORMAT


class Output:
    """Keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.writes.append(data)


def http_line(log: AccessLog, request_id: str = "id-1", status: int = 200) -> None:
    log.record(
        request_id, "rest", "POST", b"/v2/models/m/infer?x=%0A", status, None, 123, 0.00456,
        "10.0.0.7",
    )  # fmt: skip


def test_text_line_is_the_line_logging_would_write() -> None:
    output = Output()
    log = AccessLog("text", output)
    http_line(log)
    log.flush()
    (line,) = b"".join(output.writes).decode().splitlines()
    # The line the access logger wrote through logging's formatter for the same request.
    record = logging.LogRecord(
        ACCESS_LOGGER, logging.INFO, __file__, 1, '%s "%s %s" %d %dB %.1fms',
        ("10.0.0.7", "POST", "/v2/models/m/infer?x=%0A", 200, 123, 4.56), None,
    )  # fmt: skip
    record.request_id = "id-1"
    expected = logging.Formatter(TEXT_FORMAT).format(record)
    stamp, _, rest = line.partition(" INFO ")
    assert rest == expected.partition(" INFO ")[2]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", stamp), stamp


def test_json_lines_carry_every_field() -> None:
    output = Output()
    log = AccessLog("json", output)
    http_line(log, "id-2", 404)
    log.record("id-3", "grpc", "GRPC", "/inference.GRPCInferenceService/ModelInfer", 5,
               "NOT_FOUND", None, 0.0012, "ipv4:127.0.0.1:4242")  # fmt: skip
    log.flush()
    rest, grpc = (json.loads(line) for line in b"".join(output.writes).splitlines())
    assert rest | {"time": "t"} == {
        "time": "t",
        "level": "INFO",
        "logger": ACCESS_LOGGER,
        "message": '10.0.0.7 "POST /v2/models/m/infer?x=%0A" 404 123B 4.6ms',
        "request_id": "id-2",
        "protocol": "rest",
        "method": "POST",
        "path": "/v2/models/m/infer?x=%0A",
        "status": 404,
        "duration_ms": 4.56,
        "bytes": 123,
        "client": "10.0.0.7",
    }
    assert rest["time"].endswith("+00:00") and "T" in rest["time"]
    assert grpc["message"] == (
        'ipv4:127.0.0.1:4242 "GRPC /inference.GRPCInferenceService/ModelInfer" NOT_FOUND 1.2ms'
    )
    assert grpc["status"] == 5 and grpc["protocol"] == "grpc" and "bytes" not in grpc


def test_lines_go_out_in_whole_line_chunks_of_at_most_pipe_buf() -> None:
    output = Output()
    log = AccessLog("text", output)
    for i in range(500):
        http_line(log, f"id-{i}")
    log.flush()
    assert len(output.writes) > 1
    for chunk in output.writes:
        assert len(chunk) <= access.CHUNK_BYTES
        assert chunk.endswith(b"\n")
    ids = [
        line.split(b"[", 1)[1].split(b"]", 1)[0] for line in b"".join(output.writes).splitlines()
    ]
    assert ids == [f"id-{i}".encode() for i in range(500)]


def test_lines_are_written_from_the_loop_within_a_flush_interval() -> None:
    output = Output()
    log = AccessLog("text", output)

    async def serve() -> None:
        log.start()
        http_line(log, "early")
        while not output.writes:
            await asyncio.sleep(0.01)
        assert b"[early]" in output.writes[0]
        http_line(log, "last")
        log.close()

    asyncio.run(serve())
    assert b"[last]" in output.writes[-1]


def test_a_full_queue_is_written_at_once() -> None:
    output = Output()
    log = AccessLog("text", output)
    for i in range(access.MAX_PENDING - 1):
        http_line(log, f"id-{i}")
    assert output.writes == []
    http_line(log, "id-last")
    assert b"".join(output.writes).count(b"\n") == access.MAX_PENDING


def test_a_broken_output_loses_lines_not_the_server() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        log = AccessLog("text", lambda data: os.write(write_end, data))
        http_line(log)
        log.flush()  # the pipe is broken (EPIPE): no exception
        http_line(log)
        log.flush()
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    ("level", "enabled", "on"),
    [("info", True, True), ("debug", True, True), ("warning", True, False), ("info", False, False)],
)
def test_access_log_is_on_at_info_unless_turned_off(level: str, enabled: bool, on: bool) -> None:
    assert (access_log_for(level, "text", enabled) is not None) is on
