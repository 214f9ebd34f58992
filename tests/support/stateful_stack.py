"""The stack the stateful integration tests share: two real Tritons serving the
sequence and decoupled models, a traced gateway in front of both, a second
gateway (two workers) as a replica, and a span collector; plus the small
client helpers the tests use."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from tests.collector import Collector
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.triton import TritonProcess, start_triton

REPOSITORY = Path(__file__).resolve().parents[1] / "models" / "stateful"
SEQUENCES = 8
STEPS = 20
WAIT_S = 30


@dataclass
class Stack:
    tritons: list[TritonProcess]
    gateway: GatewayProcess  # in front of both Tritons
    replica: GatewayProcess  # a second gateway (two workers), same Tritons, no shared state
    metrics_url: str
    replica_metrics_url: str
    cancel_dir: Path
    collector: Collector  # the first gateway and both Tritons export their spans here


def stateful_stack(
    workdir: Path, cancel_dir: Path, env: dict[str, str], collector: Collector
) -> Iterator[Stack]:
    traced = [
        "--trace-config=mode=opentelemetry",
        f"--trace-config=opentelemetry,url={collector.http_endpoint}/v1/traces",
        "--trace-config=rate=1",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=opentelemetry,bsp_schedule_delay=200",
    ]
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SERVICE_NAME": "stateful-gateway",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with (
        start_triton(REPOSITORY, workdir / "a", env=env, extra_args=traced) as first,
        start_triton(REPOSITORY, workdir / "b", env=env, extra_args=traced) as second,
    ):
        tritons = ["--triton", first.grpc_url, "--triton", second.grpc_url, "--no-cpu-models"]

        def metrics(name: str) -> list[str]:
            return ["--metrics-port", "0", "--metrics-port-file", str(workdir / f"{name}.port")]

        with (
            start_gateway(workdir / "gw", args=[*tritons, *metrics("gw")], env=otel) as gateway,
            start_gateway(
                workdir / "replica",
                args=[*tritons, *metrics("replica"), "--workers", "2"],
                env={"GATEWAY_SERVER_NAME": "triton"},
                ready_timeout_s=90,
            ) as replica,
        ):
            yield Stack(
                [first, second],
                gateway,
                replica,
                metrics_url(workdir / "gw.port"),
                metrics_url(workdir / "replica.port"),
                cancel_dir,
                collector,
            )


def metrics_url(port_file: Path) -> str:
    return f"http://127.0.0.1:{int(port_file.read_text())}/metrics"


def sequence_input(value: int) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return [tensor]


def repeat_inputs(values: list[int], delay_ms: int) -> list[grpcclient.InferInput]:
    data = grpcclient.InferInput("IN", [len(values)], "INT32")
    data.set_data_from_numpy(np.array(values, dtype=np.int32))
    delay = grpcclient.InferInput("DELAY_MS", [1], "INT32")
    delay.set_data_from_numpy(np.array([delay_ms], dtype=np.int32))
    return [data, delay]


def metric(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels or {}).items() <= sample.labels.items():
                total += sample.value
    return total


def eventually(check: Callable[[], bool], timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def executions(triton: TritonProcess) -> int:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        stats = client.get_inference_statistics("sequence_sum", as_json=True)
    finally:
        client.close()
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))
