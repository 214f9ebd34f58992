"""The simulator-vs-real comparison's own logic: device overheads, the
15% rule, a simulated run fed a handful of send times, and how the
gateway's metrics are read."""

from __future__ import annotations

import http.server
import threading

import pytest

from loadtests import sim_vs_real_live as live
from loadtests.sim_vs_real import overheads, simulated_run, within
from loadtests.sim_vs_real_live import FleetMs
from loadtests.sim_vs_real_model import replies


def test_overhead_is_the_largest_of_learnt_triton_compute_and_gateway_call() -> None:
    fleet = FleetMs()
    real = {
        "learnt_service_ms": {"fast": 39.9, "slow": 89.1, "cpu": 57.9},
        "servers": {
            "fast": {"compute_ms": 44.2, "queue_ms": 37.0},
            "slow": {"compute_ms": 86.2, "queue_ms": 0.1},
        },
        "call_ms": {"fast": 84.0, "slow": 87.1, "cpu": 56.0},
    }
    got = overheads(fleet, real, 2.0, "learnt")
    # fast: the gateway's 84.0 ms call less Triton's 37.0 ms queue, 47.0, beats
    # Triton's 44.2 and the estimator's 39.9 (less the 41 ms configured);
    # slow: the estimator's 89.1 beats the call's 87.0 and Triton's 86.2;
    # cpu (no Triton figures): the estimator's 57.9 beats the call's 56.0.
    assert got == pytest.approx({"fast": 6.0, "slow": 7.1, "cpu": 3.9})


def test_overhead_falls_back_for_a_device_never_called_and_when_asked() -> None:
    fleet = FleetMs()
    assert overheads(fleet, {}, 2.5, "learnt") == {"fast": 2.5, "slow": 2.5, "cpu": 2.5}
    real = {"learnt_service_ms": {"fast": 50.0, "slow": 90.0, "cpu": 60.0}}
    assert overheads(fleet, real, 2.5, "triton") == {"fast": 2.5, "slow": 2.5, "cpu": 2.5}


def test_within_is_relative_to_the_larger_with_two_points_for_small_shares() -> None:
    assert within(100.0, 115.0)
    assert not within(100.0, 118.0)
    assert within(0.25, 0.22, share=True)
    assert not within(0.25, 0.20, share=True)
    assert within(0.05, 0.035, share=True)  # 30% apart, but 1.5 points, both under 10%
    assert not within(0.05, 0.01, share=True)


def test_simulated_run_answers_and_splits_by_backend() -> None:
    sent = [i * 0.05 for i in range(40)]  # 20 req/s for 2 s
    result = simulated_run(
        sent,
        FleetMs(),
        {"fast": 2.0, "slow": 2.0, "cpu": 2.0},
        [1.0, 2.0, 3.0],
        deadline_s=0.16,
    )
    shares = result["share"]
    assert isinstance(shares, dict)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["fast"] > shares["slow"]  # the fast server finishes soonest most often
    assert result["requests"] == len(sent)


def test_path_noise_in_order_runs_and_answers_within_a_loose_deadline() -> None:
    """The noise series replayed in time order (its second half a 30 ms
    burst) still lets every request of a light load answer in time."""
    sent = [i * 0.05 for i in range(40)]
    quiet_then_burst = [0.0] * 10 + [30.0] * 10  # the second half of a 1 s span
    kwargs = {"deadline_s": 0.5, "path_before": 1.0, "path_span_s": 1.0}
    result = simulated_run(
        sent, FleetMs(), {"fast": 0.0, "slow": 0.0, "cpu": 0.0}, quiet_then_burst, **kwargs
    )  # type: ignore[arg-type]
    assert result["ok"] == len(sent)


_METRICS = b"""# TYPE gateway_requests counter
gateway_requests_total{model="m",backend="b",code="OK"} 3.0
gateway_requests_total{model="m",backend="b",code="UNAVAILABLE"} 1.0
gateway_requests_total{model="other",backend="b",code="OK"} 9.0
# TYPE gateway_backend_call_duration_seconds histogram
gateway_backend_call_duration_seconds_bucket{backend="b",model="m",le="+Inf"} 3
gateway_backend_call_duration_seconds_sum{backend="b",model="m"} 1.5
gateway_backend_call_duration_seconds_count{backend="b",model="m"} 3
# TYPE gateway_backend_service_time_seconds gauge
gateway_backend_service_time_seconds{backend="b",model="m",batch_bucket="1"} 0.04
gateway_backend_service_time_seconds{backend="b",model="m",batch_bucket="2"} 0.05
"""


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(_METRICS)

    def log_message(self, *args: object) -> None:  # quiet
        pass


def test_gateway_metrics_are_read_by_sample_name_and_model() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        assert live._served_by_backend(url, "m") == {"b": 3.0}
        assert live._learnt_service_s(url, "m") == {"b": 0.04}
        assert live._calls(url, "m") == {"b": (1.5, 3.0)}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_measured_overhead_leaves_out_the_estimators_belief() -> None:
    # The live estimator held 254 ms for a server whose calls took 92 ms.
    real = {
        "learnt_service_ms": {"fast": 38.1, "slow": 253.8, "cpu": 52.8},
        "servers": {
            "fast": {"compute_ms": 42.0, "queue_ms": 50.6},
            "slow": {"compute_ms": 84.3, "queue_ms": 0.1},
        },
        "call_ms": {"fast": 97.7, "slow": 92.1, "cpu": 61.5},
    }
    got = overheads(FleetMs(), real, 2.0, "measured")
    assert got == pytest.approx({"fast": 6.1, "slow": 10.0, "cpu": 7.5})
    assert overheads(FleetMs(), real, 2.0, "learnt")["slow"] == pytest.approx(171.8)


def test_the_simulated_estimator_starts_from_the_live_ones_state() -> None:
    """A slow server the live estimator believed at 300 ms, past the 160 ms
    deadline, is never tried: its belief, not its cost, decides."""
    sent = [i * 0.02 for i in range(60)]  # 50 req/s: more than the fast server takes
    costs = {"fast": 2.0, "slow": 2.0, "cpu": 2.0}
    fresh = simulated_run(sent, FleetMs(), costs, [0.0], deadline_s=0.16)
    believed = simulated_run(
        sent, FleetMs(), costs, [0.0], deadline_s=0.16, estimates={"slow": 300.0}
    )
    assert fresh["share"]["slow"] > 0.0  # type: ignore[index]
    assert believed["share"]["slow"] == 0.0  # type: ignore[index]


def test_split_holds_each_device_for_its_compute_and_makes_the_rest_its_reply() -> None:
    real = {
        "servers": {
            "fast": {"compute_ms": 42.9, "queue_ms": 37.1},
            "slow": {"compute_ms": 83.4, "queue_ms": 0.1},
        },
        "call_ms": {"fast": 82.0, "slow": 86.0, "cpu": 60.9},
    }
    # fast: 42.9 ms of Triton's compute on the device (1.9 over the configured
    # 41), and the gateway's 82.0 ms less 37.1 queued and 42.9 computed as its
    # reply; the CPU pool (no server statistics) its configured 54 ms, the rest reply.
    assert overheads(FleetMs(), real, 2.0, "split") == pytest.approx(
        {"fast": 1.9, "slow": 1.4, "cpu": 0.0}
    )
    assert replies(FleetMs(), real) == pytest.approx({"fast": 2.0, "slow": 2.5, "cpu": 6.9})
    assert replies(FleetMs(), {}) == {"fast": 0.0, "slow": 0.0, "cpu": 0.0}


def test_a_devices_reply_reaches_the_simulated_device() -> None:
    """At a light load (nothing queues), each call's reply adds its time to
    the latency of the requests the device served; the device itself runs
    in the engine (``DeviceSpec.reply_s``, tested in ``test_sim``)."""
    sent = [i * 0.2 for i in range(20)]
    costs = {"fast": 0.0, "slow": 0.0, "cpu": 0.0}
    base = simulated_run(sent, FleetMs(), costs, [0.0], deadline_s=10.0)
    reply = simulated_run(sent, FleetMs(), costs, [0.0], deadline_s=10.0, reply_ms={"fast": 5.0})
    assert base["share"] == reply["share"] == {"fast": 1.0, "slow": 0.0, "cpu": 0.0}
    assert float(reply["p50_ms"]) == pytest.approx(float(base["p50_ms"]) + 5.0)  # type: ignore[arg-type]
