"""``infer_group``: several requests for one model that arrived together, in one call.

A front end that reads many requests in one turn of its event loop (the
gateway's streams, ``gateway.stream_group``) hands them over at once: where the
model's batcher would run a lone request at once anyway, the group runs as
ready-made batches (``Batcher.submit_group``), one placement and backend call
for several requests instead of one each. Anything else goes request by request
through ``Scheduler.infer``, concurrently, as separate callers would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from scheduler.clock import Clock
from scheduler.errors import GatewayError
from scheduler.request import InferRequest, InferResult
from scheduler.spec import ModelSpec
from scheduler.validation import validate_inputs, validate_requested_outputs

if TYPE_CHECKING:
    from scheduler.dispatcher import Scheduler

#: Each request's result, or the error that ended it, in the order given.
Results = list[InferResult | Exception]


async def infer_group(
    scheduler: Scheduler, requests: Sequence[InferRequest], spec: ModelSpec, clock: Clock
) -> Results:
    """Run ``requests`` (all of model ``spec``, as the caller resolved it);
    one request's failure is its own, the others' results stand."""
    if len(requests) == 1:
        return [await _one(scheduler, requests[0], spec)]
    batcher = scheduler.batcher_of(spec)  # None: the gateway does not batch the model
    if batcher is None or (batcher.spec is not spec and batcher.spec != spec):
        return list(await asyncio.gather(*(_one(scheduler, r, spec) for r in requests)))
    start = clock.now()
    results: Results = [GatewayError("not run")] * len(requests)
    runnable: list[int] = []
    for index, request in enumerate(requests):
        try:
            if request.checked is not spec:
                if request.requested_outputs:
                    validate_requested_outputs(spec, request.requested_outputs)
                validate_inputs(spec, request.inputs)
        except GatewayError as exc:
            results[index] = exc
            continue
        runnable.append(index)
    outcomes = await batcher.submit_group([requests[i] for i in runnable])
    total_s = clock.now() - start
    version = spec.versions[-1]
    ok = ok_rows = failed = 0  # recorded at once: every member took ``total_s``
    for index, outcome in zip(runnable, outcomes, strict=True):
        request = requests[index]
        if isinstance(outcome, Exception):
            failed += isinstance(outcome, GatewayError)
            results[index] = outcome
            continue
        ok += 1
        ok_rows += next(iter(request.inputs.values())).shape[0] if request.inputs else 1
        result = InferResult(
            spec.name,
            request.model_version or version,
            {},
            request.id,
            backend_id=request.served_by,
        )
        if isinstance(outcome, bytes):  # the backend's encoded response, as it came
            result.wire = outcome
        else:
            result.outputs = outcome
        results[index] = result
    stats = scheduler.stats(spec.name)
    if ok:
        stats.record_request(ok=True, total_s=total_s, rows=ok_rows, count=ok)
    if failed:
        stats.record_request(ok=False, total_s=total_s, rows=0, count=failed)
    return results


async def _one(
    scheduler: Scheduler, request: InferRequest, spec: ModelSpec
) -> InferResult | Exception:
    try:
        return await scheduler.infer(request, spec)
    except Exception as exc:
        return exc
