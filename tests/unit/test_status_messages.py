"""Issue 9 items 8 and 11: what a status message may carry back to a caller."""

from __future__ import annotations

import logging

import pytest

from gateway.status import MAX_MESSAGE_CHARS, internal_error, short


def test_backend_ids_and_addresses_are_not_shown_to_callers() -> None:
    message = short(
        "model 'm': no backend can finish in time: fastest triton@127.0.0.1:38015 "
        "predicted 40.00 ms, 3.00 ms left; Triton at 10.0.0.5:8001 and [::1]:8001"
    )
    assert "127.0.0.1" not in message and "10.0.0.5" not in message and "::1" not in message
    assert "predicted 40.00 ms" in message
    assert short("batch of 12:30 rows") == "batch of 12:30 rows"


def test_long_messages_are_cut() -> None:
    message = short("unknown model '" + "m" * 20000 + "'")
    assert len(message) <= MAX_MESSAGE_CHARS and message.endswith("(message cut)")


def test_internal_errors_log_one_traceback_per_kind_not_one_per_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.status")
    for _ in range(50):
        error = internal_error(KeyError("secret detail"))
        assert "secret detail" not in error.message and "reference" in error.message
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert len(with_traceback) == 1
    assert len(caplog.records) == 50
