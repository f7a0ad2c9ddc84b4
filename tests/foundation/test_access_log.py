"""The batched access log (services/fhir/observability.py `AccessLog`): the same JSON line the formatter
writes, written by the event loop shortly after the request, and through `logging` whenever something other
than the JSON stream is listening."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from services.fhir.observability import AccessLog, JsonFormatter, request_id_var


@pytest.fixture
def json_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose only destination is a JSON stream, as `configure_logging` sets up for the root.

    pytest attaches its capture handlers to such a logger once the test starts; `only_json` takes them off."""
    logger = logging.getLogger("cicatrix.test-access")
    stream = io.StringIO()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.handlers, logger.propagate = [], True


def only_json(logger: logging.Logger, stream: io.StringIO) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.handlers = [handler]
    return handler


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_are_written_together_shortly_after_the_requests(json_logger):
    logger, stream = json_logger
    only_json(logger, stream)
    access = AccessLog(logger.name, delay=0.05)

    async def requests() -> tuple[str, list[dict[str, object]]]:
        for n in range(3):
            access.request("GET", "/fhir/{resource_type}/{id}", 200 + n, 0.0012, f"req-{n}")
        before = stream.getvalue()
        await asyncio.sleep(0.2)
        return before, lines(stream)

    before, written = asyncio.run(requests())
    assert before == "", "nothing is written per request"
    assert [line["request_id"] for line in written] == ["req-0", "req-1", "req-2"]
    first = written[0]
    assert first["logger"] == logger.name and first["level"] == "info" and first["msg"] == "request"
    assert first["route"] == "/fhir/{resource_type}/{id}" and first["status"] == 200 and first["ms"] == 1.2
    assert str(first["ts"]).endswith("Z") and len(str(first["ts"])) == len("2026-11-25T10:00:00.123Z")


def test_a_full_batch_is_written_at_once_and_the_rest_at_exit(json_logger):
    logger, stream = json_logger
    only_json(logger, stream)
    access = AccessLog(logger.name, delay=60, batch=4)

    async def requests() -> int:
        for _ in range(6):
            access.request("GET", "/fhir/metadata", 200, 0.001, None)
        return len(lines(stream))

    assert asyncio.run(requests()) == 4
    access.flush()  # what the exit hook does
    written = lines(stream)
    assert len(written) == 6 and "request_id" not in written[-1]


def test_lines_go_through_logging_when_another_handler_listens(json_logger):
    logger, stream = json_logger
    only_json(logger, stream)
    captured = logging.Handler()
    records: list[logging.LogRecord] = []
    captured.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(captured)
    token = request_id_var.set("req-9")  # the edge writes the line inside the request's context
    try:
        AccessLog(logger.name).request("POST", "/fhir/CarePlan/$generate", 201, 0.02, "req-9")
    finally:
        request_id_var.reset(token)
    assert len(records) == 1 and records[0].status == 201  # type: ignore[attr-defined]
    assert lines(stream)[0]["request_id"] == "req-9", "the JSON stream still gets the line, unbatched"


def test_nothing_is_written_below_the_logger_level(json_logger):
    logger, stream = json_logger
    only_json(logger, stream)
    logger.setLevel(logging.WARNING)
    access = AccessLog(logger.name)
    access.request("GET", "/fhir/metadata", 200, 0.001, None)
    access.flush()
    assert stream.getvalue() == ""


def test_a_line_names_the_interaction_the_edge_parsed(json_logger):
    logger, stream = json_logger
    only_json(logger, stream)
    access = AccessLog(logger.name)
    access.request("GET", "/fhir/{resource_type}/{resource_id}", 200, 0.001, "req-a", "read")
    access.request("GET", "/healthz", 200, 0.001, "req-b")
    access.flush()
    named, unnamed = lines(stream)
    assert named["interaction"] == "read" and named["route"] == "/fhir/{resource_type}/{resource_id}"
    assert "interaction" not in unnamed
