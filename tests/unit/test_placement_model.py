"""``place``'s fast path against its general path (hypothesis): on random
candidates, with and without the precomputed ``accelerator_ok`` and
``penalty`` columns, the decision must be the same in every field."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.placement import Candidates, Decision, Tier, _place, accelerators_with_room, place


def fields(d: Decision) -> tuple[object, ...]:
    """A decision's fields, NaN made comparable."""
    return tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in d)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), n=st.integers(1, 12))
def test_the_fast_path_decides_as_the_general_one(data: st.DataObject, n: int) -> None:
    def column(values: st.SearchStrategy[object]) -> list[object]:
        return data.draw(st.lists(values, min_size=n, max_size=n))

    seconds = st.sampled_from([0.0, 0.001, 0.002, 0.005, 0.01, 0.03])
    c = Candidates(
        backend_ids=tuple(f"b{i}" for i in range(n)),
        tier=np.array(column(st.sampled_from([Tier.ACCELERATOR, Tier.CPU])), np.int8),
        available=np.array(column(st.booleans()), np.bool_),
        memory_ok=np.array(column(st.booleans()), np.bool_),
        load_ok=np.array(column(st.booleans()), np.bool_),
        queued_s=np.array(column(seconds), np.float64),
        service_s=np.array(column(seconds | st.just(math.nan)), np.float64),
        sampled_at=np.array(column(st.just(9.5) | st.just(10.5) | st.just(math.nan)), np.float64),
    )
    now = 10.0
    deadline = data.draw(st.none() | st.sampled_from([now - 1, now, now + 0.004, now + 0.02]))
    unknown = data.draw(st.sampled_from([0.0, 0.001]))
    fast = place(c, now=now, deadline=deadline, unknown_service_s=unknown)
    general = _place(c, now=now, deadline=deadline, unknown_service_s=unknown)
    assert fields(fast) == fields(general)
    assert fast.reason == general.reason  # the fast path's, worded when read
    room = accelerators_with_room(c.tier, c.memory_ok, c.load_ok)
    kept = c._replace(accelerator_ok=room)
    assert fields(place(kept, now=now, deadline=deadline, unknown_service_s=unknown)) == fields(
        fast
    )
    blocked = ~(c.available & room)
    penalty = np.where(blocked, np.inf, np.nan)  # as the candidate tables keep it
    applied = kept._replace(penalty=penalty)
    assert np.array_equal(np.isinf(applied.penalty), blocked)
    assert fields(place(applied, now=now, deadline=deadline, unknown_service_s=unknown)) == (
        fields(fast)
    )
