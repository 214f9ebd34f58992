"""What the observability tests share: the model they call, Triton's trace
flags for a collector, a request of int64s, an answer's trailing metadata,
and a metrics scrape read back by name and labels."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.inference import grpc_service_pb2 as pb
from tests.collector import Collector

MODEL = "int64_offset"
#: The backend call's span, named as the OpenTelemetry RPC conventions say.
BACKEND_SPAN = "inference.GRPCInferenceService/ModelInfer"


def triton_trace_args(collector: Collector) -> list[str]:
    return [
        "--trace-config=mode=opentelemetry",
        f"--trace-config=opentelemetry,url={collector.http_endpoint}/v1/traces",
        "--trace-config=rate=1",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=opentelemetry,bsp_schedule_delay=200",
    ]


def int64_request(values: np.ndarray, model: str = MODEL) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="INPUT", datatype="INT64", shape=list(values.shape)
            )
        ],
        raw_input_contents=[values.tobytes()],
    )


def trailing(call: grpc.Call) -> dict[str, str]:
    return {key: str(value) for key, value in call.trailing_metadata() or ()}


def scrape(url: str) -> str:
    """The text a metrics endpoint serves now."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def samples(text: str) -> Callable[[str, dict[str, str]], float]:
    """A lookup of a scrape's samples by name and exact labels (0 where absent)."""
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(name: str, labels: dict[str, str]) -> float:
        return values.get((name, frozenset(labels.items())), 0.0)

    return value
