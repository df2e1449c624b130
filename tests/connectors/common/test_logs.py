"""Log lines: JSON fields, the request id, and secrets blanked wherever they appear."""

from __future__ import annotations

import json
import logging

from connectors.common.logs import JsonFormatter, RequestContext, redact, request_id


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("trusted_space.test", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_the_fields_and_the_current_request_id() -> None:
    token = request_id.set("req-12345678")
    try:
        record = _record("POST /x 202", method="POST", path="/x", status=202, duration_ms=1.5)
        RequestContext().filter(record)
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id.reset(token)

    assert line["request_id"] == "req-12345678"
    assert (line["level"], line["logger"], line["message"]) == (
        "info",
        "trusted_space.test",
        "POST /x 202",
    )
    assert (line["method"], line["path"], line["status"], line["duration_ms"]) == (
        "POST",
        "/x",
        202,
        1.5,
    )


def test_tokens_are_blanked_in_every_place_a_library_may_put_them() -> None:
    signed = "eyJhbGciOiJFZERTQSJ9.eyJpc3MiOiJiYW5rLWEifQ.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
    text = f"Authorization: Bearer s3cr3t-admin; header TS-Request={signed} authorization=abc"
    out = redact(text)
    assert "s3cr3t-admin" not in out
    assert signed not in out
    assert "authorization=abc" not in out
