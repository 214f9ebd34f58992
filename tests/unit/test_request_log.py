"""gateway.request_log: a line per failed request, rate-limited, none lost silently."""

from __future__ import annotations

import logging

import pytest

from gateway.request_log import RequestLog
from scheduler.clock import ManualClock

TRACE = "0af7651916cd43dd8448eb211c80319c"


def test_errors_get_a_line_with_the_trace_id_ok_requests_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.requests")
    requests = RequestLog(ManualClock())
    requests.request_done("m", "OK", "b1", 0.002, TRACE)
    requests.request_done(
        "m", "NOT_FOUND", "", 0.001, TRACE, "no model 'x'", queue_s=0.0005, backend_s=0.0
    )
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"request model=m code=NOT_FOUND backend=none took_ms=1.000 queue_ms=0.500 "
        f"backend_ms=0.000 trace_id={TRACE}: no model 'x'"
    )


def test_the_rate_limit_drops_lines_and_says_how_many(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.requests")
    clock = ManualClock()
    requests = RequestLog(clock, rate_per_s=2.0, burst=3)
    for _ in range(10):
        requests.request_done("m", "UNAVAILABLE", "b1", 0.001, "")
    assert len(caplog.records) == 3 and requests.dropped == 7
    clock.advance(0.5)  # one token back
    requests.request_done("m", "UNAVAILABLE", "b1", 0.001, "")
    assert "(7 lines dropped by the rate limit before this one)" in caplog.records[-1].getMessage()
    assert requests.dropped == 0


def test_ok_requests_are_sampled_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.requests")
    requests = RequestLog(ManualClock(), ok_sample=1.0)
    requests.request_done("m", "OK", "b1", 0.002, TRACE)
    assert caplog.records[0].levelno == logging.INFO
