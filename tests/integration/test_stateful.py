"""Sequence and decoupled models through the gateway in front of TWO real Tritons.

Triton's example clients are not shipped in tritonclient's wheel (and it has
no source distribution), so the clients here are written the way those
examples are (``simple_grpc_sequence_stream_infer_client.py``,
``simple_grpc_sequence_sync_infer_client.py``, the decoupled "repeat"
client), with tritonclient's public API only: sync ``infer`` with
``sequence_id``/``sequence_start``/``sequence_end``, and the streaming
``start_stream``/``async_stream_infer``/``stop_stream``.

The test that kills a Triton runs last: it leaves one server standing.
"""

from __future__ import annotations

import queue
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from scheduler.sequences import rendezvous
from tests.collector import start_collector
from tests.support.stateful_stack import (
    SEQUENCES,
    STEPS,
    WAIT_S,
    Stack,
    eventually,
    executions,
    metric,
    repeat_inputs,
    sequence_input,
    stateful_stack,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stateful")
    cancel_dir = workdir / "cancelled"
    cancel_dir.mkdir()
    env = {"REPEAT_CANCEL_DIR": str(cancel_dir)}
    with start_collector(workdir / "collector") as collector:
        yield from stateful_stack(workdir, cancel_dir, env, collector)


# -- sequences ---------------------------------------------------------------------------------


def test_concurrent_sequences_on_one_stream_are_all_correct(stack: Stack) -> None:
    """8 sequences x 20 steps interleaved on one stream (integer and string ids):
    every running sum right, though the gateway places them over two Tritons."""
    rng = np.random.default_rng(13)
    ids: list[int | str] = [*range(1000, 1000 + SEQUENCES // 2)]
    ids += [f"stream-{i}" for i in range(SEQUENCES // 2)]
    values = {sid: rng.integers(-100, 100, STEPS).tolist() for sid in ids}
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    before = [executions(t) for t in stack.tritons]
    client = grpcclient.InferenceServerClient(stack.gateway.address)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for step in range(STEPS):
            for sid in ids:
                client.async_stream_infer(
                    "sequence_sum",
                    sequence_input(values[sid][step]),
                    request_id=f"{sid}/{step}",
                    sequence_id=sid,
                    sequence_start=step == 0,
                    sequence_end=step == STEPS - 1,
                )
        got: dict[str, int] = {}
        for _ in range(SEQUENCES * STEPS):
            result, error = results.get(timeout=WAIT_S)
            assert error is None, error
            got[result.get_response().id] = int(result.as_numpy("OUTPUT")[0][0])
    finally:
        client.stop_stream()
        client.close()
    for sid in ids:
        expected = np.cumsum(values[sid]).tolist()
        assert [got[f"{sid}/{step}"] for step in range(STEPS)] == expected, sid
    after = [executions(t) for t in stack.tritons]
    assert sum(after) - sum(before) == SEQUENCES * STEPS
    assert all(a > b for a, b in zip(after, before, strict=True)), "both Tritons take sequences"


def test_sequences_hold_across_gateway_replicas_and_workers(stack: Stack) -> None:
    """8 concurrent sequences x 20 unary steps, each step through the other
    gateway than the one before; the second gateway has two workers, and each
    of its steps comes on a new connection, which either worker may take:
    affinity without shared state."""
    rng = np.random.default_rng(17)
    values = {1 + i: rng.integers(-100, 100, STEPS).tolist() for i in range(SEQUENCES)}
    outcomes: dict[int, list[int]] = {}
    failures: list[BaseException] = []

    def run(sid: int) -> None:
        try:
            sums = []
            for step in range(STEPS):
                address = stack.replica.address if step % 2 else stack.gateway.address
                # A channel of its own (not the process-wide pool): a new connection.
                client = grpcclient.InferenceServerClient(
                    address, channel_args=[("grpc.use_local_subchannel_pool", 1)]
                )
                try:
                    result = client.infer(
                        "sequence_sum",
                        sequence_input(values[sid][step]),
                        sequence_id=sid,
                        sequence_start=step == 0,
                        sequence_end=step == STEPS - 1,
                        client_timeout=WAIT_S,
                    )
                finally:
                    client.close()
                sums.append(int(result.as_numpy("OUTPUT")[0][0]))
            outcomes[sid] = sums
        except BaseException as exc:  # reported below, with the others
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(sid,)) for sid in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 2)
    assert not failures, failures
    assert outcomes == {sid: np.cumsum(v).tolist() for sid, v in values.items()}
    workers = set()
    with urllib.request.urlopen(stack.replica_metrics_url, timeout=5) as response:
        for family in text_string_to_metric_families(response.read().decode()):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "gateway_requests_total" and labels["model"] == "sequence_sum":
                    workers.add(labels["worker"])
    assert workers == {"0", "1"}, "both workers of the replica took steps"


def test_sequence_model_is_not_batched_by_the_gateway(stack: Stack) -> None:
    assert metric(stack.metrics_url, "gateway_batches_total", {"model": "sequence_sum"}) == 0
    assert metric(stack.metrics_url, "gateway_requests_total", {"model": "sequence_sum"}) > 0


# -- decoupled ---------------------------------------------------------------------------------


def _stream_all(address: str, requests: list[tuple[str, list[int], bool]]) -> dict[str, list[Any]]:
    """Send (id, values, empty final?) on one stream; every response of each, in order."""
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(address)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    expected = {rid: len(values) + (1 if empty else 0) for rid, values, empty in requests}
    got: dict[str, list[Any]] = {rid: [] for rid in expected}
    try:
        for rid, values, empty in requests:
            client.async_stream_infer(
                "repeat",
                repeat_inputs(values, 5),
                request_id=rid,
                enable_empty_final_response=empty,
            )
        for _ in range(sum(expected.values())):
            result, error = results.get(timeout=WAIT_S)
            assert error is None, error
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            out = result.as_numpy("OUT")
            idx = result.as_numpy("IDX")
            got[response.id].append(
                (None if out is None else int(out[0]), None if idx is None else int(idx[0]), final)
            )
    finally:
        client.stop_stream()
        client.close()
    return got


def test_decoupled_responses_stream_through_as_from_triton(stack: Stack) -> None:
    requests = [("a", [5, 6, 7, 8], False), ("b", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], True)]
    requests.append(("c", [42], True))
    via = _stream_all(stack.gateway.address, requests)
    direct = _stream_all(stack.tritons[0].grpc_url, requests)
    assert via == direct
    assert via["b"][-1] == (None, None, True)  # the empty final response, as asked
    assert [v for v, _, _ in via["a"]] == [5, 6, 7, 8]
    assert metric(
        stack.metrics_url, "gateway_stream_first_response_seconds_count", {"model": "repeat"}
    ) >= len(requests)
    assert (
        metric(stack.metrics_url, "gateway_stream_response_gap_seconds_count", {"model": "repeat"})
        >= 4 + 10
    )


def test_one_trace_covers_the_whole_stream(stack: Stack) -> None:
    """The caller's trace holds the gateway's stream span, Triton's spans under
    it, and an event per response on the request's (SERVER) span."""
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    channel = grpc.insecure_channel(stack.gateway.address)
    rpc = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=service_pb2.ModelInferRequest.SerializeToString,
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )
    request = service_pb2.ModelInferRequest(model_name="repeat", id="traced")
    request.inputs.add(name="IN", datatype="INT32", shape=[5])
    request.inputs.add(name="DELAY_MS", datatype="INT32", shape=[1])
    request.raw_input_contents.extend(
        [np.arange(5, dtype=np.int32).tobytes(), np.array([20], np.int32).tobytes()]
    )
    try:
        responses = list(
            rpc(iter([request]), metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),))
        )
    finally:
        channel.close()
    assert [r.infer_response.id for r in responses] == ["traced"] * 5

    def complete(spans: list[Any]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        stream = [s for s in mine if s.name == "backend.stream"]
        return bool(stream) and any(s.parent_id == stream[0].span_id for s in mine)

    try:
        spans = [s for s in stack.collector.wait_for(complete, 30) if s.trace_id == trace_id]
    except TimeoutError as timeout:  # say which of the trace's spans came (seen once in CI)
        received = stack.collector.spans()
        mine = [
            (s.name, s.service, s.span_id, s.parent_id) for s in received if s.trace_id == trace_id
        ]
        raise AssertionError(f"{timeout}; of trace {trace_id}: {mine}") from None
    [server] = [s for s in spans if s.parent_id == parent_id]
    assert server.name.endswith("ModelStreamInfer") and server.service == "stateful-gateway"
    [stream] = [s for s in spans if s.name == "backend.stream"]
    assert stream.parent_id == server.span_id
    assert any(s.parent_id == stream.span_id and s.service != server.service for s in spans)
    log = stack.collector.output.read_text(errors="replace")
    assert "first response" in log and "stream end" in log


def test_unary_call_to_a_decoupled_model_fails_as_on_triton(stack: Stack) -> None:
    client = grpcclient.InferenceServerClient(stack.gateway.address)
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.infer("repeat", repeat_inputs([1], 1))
    finally:
        client.close()
    assert raised.value.status() == str(grpc.StatusCode.UNIMPLEMENTED)
    message = raised.value.message()
    assert message.startswith(
        "ModelInfer RPC doesn't support models with decoupled transaction policy"
    )


def test_unknown_model_message_starts_with_tritons(stack: Stack) -> None:
    """What Triton's simple_grpc_health_metadata.py example matches on."""
    client = grpcclient.InferenceServerClient(stack.gateway.address)
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.get_model_metadata("wrong_model_name")
    finally:
        client.close()
    assert "Request for unknown model" in raised.value.message()
    assert "sequence_sum" in raised.value.message()  # our detail follows


def test_server_name_is_a_setting(stack: Stack) -> None:
    names = []
    for address in (stack.gateway.address, stack.replica.address):
        client = grpcclient.InferenceServerClient(address)
        try:
            names.append(client.get_server_metadata().name)
        finally:
            client.close()
    assert names == ["inference-gateway", "triton"]


def test_open_streams_spread_and_cancelling_the_caller_cancels_triton(stack: Stack) -> None:
    """Two long streams land on the two Tritons (placement counts open streams);
    stopping the caller's stream cancels both requests inside Triton."""
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(stack.gateway.address)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for rid in ("long-1", "long-2"):
            client.async_stream_infer("repeat", repeat_inputs(list(range(500)), 20), request_id=rid)
            results.get(timeout=WAIT_S)  # the first response: the stream is open
        for triton in stack.tritons:
            url = f"triton@{triton.grpc_url}"
            assert metric(stack.metrics_url, "gateway_backend_open_streams", {"backend": url}) == 1
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    assert eventually(
        lambda: (
            {p.name for p in stack.cancel_dir.iterdir()} >= {"cancelled-long-1", "cancelled-long-2"}
        )
    ), "Triton saw no cancellation"
    assert eventually(lambda: metric(stack.metrics_url, "gateway_backend_open_streams") == 0)


# -- last: a Triton dies mid-sequence ------------------------------------------------------


def test_killed_triton_loses_its_sequences_clearly(stack: Stack) -> None:
    # Four sequences on each Triton, found with the gateway's own hashing (a
    # Triton holds 8 idle sequences at most: max_batch_size slots per instance).
    backends = [f"triton@{t.grpc_url}" for t in stack.tritons]
    on: dict[str, list[int]] = {backend: [] for backend in backends}
    for sid in range(5000, 6000):
        home = on[str(rendezvous("sequence_sum", sid, backends))]
        if len(home) < 4:
            home.append(sid)
    ids = sorted(sid for sids in on.values() for sid in sids)
    client = grpcclient.InferenceServerClient(stack.gateway.address)
    try:
        for sid in ids:
            client.infer("sequence_sum", sequence_input(sid), sequence_id=sid, sequence_start=True)
        stack.tritons[1].kill()
        survived, lost = [], []
        for sid in ids:
            try:
                result = client.infer("sequence_sum", sequence_input(1), sequence_id=sid)
            except InferenceServerException as exc:
                assert exc.status() == str(grpc.StatusCode.ABORTED), exc
                assert f"state of sequence {sid} of model 'sequence_sum' is lost" in exc.message()
                lost.append(sid)
            else:
                assert int(result.as_numpy("OUTPUT")[0][0]) == sid + 1  # never restarted elsewhere
                survived.append(sid)
        assert (survived, lost) == (on[backends[0]], on[backends[1]])
        for sid in lost:  # still lost on the next step: never a silent restart
            with pytest.raises(InferenceServerException, match="is lost"):
                client.infer("sequence_sum", sequence_input(1), sequence_id=sid)
        # Started again, a lost sequence runs on the Triton that is left.
        result = client.infer(
            "sequence_sum", sequence_input(7), sequence_id=lost[0], sequence_start=True
        )
        assert int(result.as_numpy("OUTPUT")[0][0]) == 7
    finally:
        client.close()
