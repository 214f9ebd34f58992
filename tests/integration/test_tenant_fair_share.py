"""Issue 9: tenants at one priority level take turns in a model's batch queue,
through a real gateway and a real ``tritonserver``.

Tenant "noisy" sends a burst of 16 one-row requests, all within its quota;
tenant "quiet" sends 4 a moment later. The model runs one batch of at most 4
rows at a time, 80 ms each, so the burst alone takes 4 batches. In earliest
deadline (arrival) order the quiet requests would run after the whole burst, 5
batches in; and a batch sent ahead into Triton's own FIFO would hold them back
by one more. With fair share and no batch sent ahead, they run in the batches
after the first, turn about with the burst: the last of them is answered about
three batch times before the burst's last request (about two if a batch were
sent ahead). Ordering only, with half a batch time to spare: no latency bound.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from gateway.api.inference import grpc_service_pb2 as pb
from tests.support.gateway import start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton

BATCH_MS = 80
TENANTS = {
    "quiet": {"api_keys": ["quiet-key"]},
    "noisy": {"api_keys": ["noisy-key"], "rate_per_s": 20, "burst": 20},
}
REQUEST = pb.ModelInferRequest(
    model_name="gpu_sim",
    inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT", datatype="FP32", shape=[1, 4])],
    raw_input_contents=[bytes(16)],
).SerializeToString()


def test_a_burst_does_not_hold_back_another_tenant(tmp_path: Path) -> None:
    triton_env = {"GPU_SIM_FIXED_MS": str(BATCH_MS), "GPU_SIM_PER_ITEM_MS": "0"}
    batching = {"gpu_sim": {"max_batch_size": 4, "max_queue_delay_microseconds": 1000}}
    env = {
        "GATEWAY_BATCHING": json.dumps(batching),
        "GATEWAY_NVML": "false",
        "GATEWAY_TENANTS": json.dumps(TENANTS),
    }
    with start_triton(MODEL_REPOSITORY, tmp_path / "triton", env=triton_env) as triton:
        args = ["--triton", triton.grpc_url, "--no-cpu-models"]
        with start_gateway(tmp_path / "gateway", args=args, env=env) as gw:
            channel = grpc.insecure_channel(gw.address)
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            done: dict[str, list[float]] = {"quiet": [], "noisy": []}
            lock = threading.Lock()

            def send(tenant: str) -> None:
                metadata = (("authorization", f"Bearer {tenant}-key"),)
                call(REQUEST, timeout=20, metadata=metadata)
                with lock:
                    done[tenant].append(time.perf_counter())

            send("quiet")  # warm up: the connection to Triton, a measured batch time
            done["quiet"].clear()
            with ThreadPoolExecutor(20) as pool:
                burst = [pool.submit(send, "noisy") for _ in range(16)]
                time.sleep(BATCH_MS / 4 / 1e3)  # the first batch of the burst is running
                quiet = [pool.submit(send, "quiet") for _ in range(4)]
                for future in burst + quiet:
                    future.result(timeout=30)
            channel.close()
    assert len(done["quiet"]) == 4 and len(done["noisy"]) == 16
    margin_s = max(done["noisy"]) - max(done["quiet"])
    # Measured here: 252 ms with fair share and no batch sent ahead, 171 ms
    # with one batch sent ahead, negative in arrival order (quiet last).
    assert margin_s > 2.5 * BATCH_MS / 1e3, (
        f"the quiet tenant's last answer came {margin_s * 1e3:.0f} ms before the burst's last; "
        "fair share should put it about three batches ahead"
    )
