"""Issue 9 item 12: ``batching`` settings are checked at start-up, like the rest."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_settings


@pytest.mark.parametrize(
    ("batching", "words"),
    [
        ({"m": {"max_queue_delay_microsecond": 5}}, ["unknown key", "max_queue_delay_microsecond"]),
        ({"m": {"max_queue_delay_microseconds": "soon"}}, ["batching.m", "soon"]),
        (
            {"m": {"default_queue_policy": {"max_queue_sise": 3}}},
            ["queue policy", "max_queue_sise"],
        ),
        ({"m": {"max_batch_size": 0}}, ["max_batch_size must be >= 1"]),
    ],
)
def test_a_bad_batching_entry_stops_start_up(batching: object, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(batching=batching)
    for word in words:
        assert word in str(info.value)


def test_good_batching_entries_pass() -> None:
    settings = load_settings(
        batching={
            "a": {"max_queue_delay_microseconds": 100, "preferred_batch_size": [4]},
            "b": {"maxBatchSize": 4, "defaultQueuePolicy": {"maxQueueSize": 8}},
        }
    )
    assert set(settings.batching) == {"a", "b"}
