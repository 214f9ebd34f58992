"""Issue 9: the gateway's RSS is bounded and returned after a spike of large
requests (``gateway.memory``), against a real ``tritonserver``.

Bound from measurement (loadtests/results/reliability.md, "Memory after large
requests"): 24 concurrent 32 MiB requests left the RSS 5-31 MiB above where
it was before, 0.5 s after the last answer; before the fix 1.7-2.0 GiB
stayed. The test sends 8 (less load on a shared machine) and allows 96 MiB
within 10 s; on the code before it failed with 500 MiB held.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from loadtests.memory_bench import gpu_sim_request
from tests.support.gateway import rss_bytes, start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton

MIB = 1 << 20
REQUESTS = 8
RETURNED_WITHIN_BYTES = 96 * MIB
RETURNED_WITHIN_S = 10.0


def test_rss_returns_after_a_spike_of_large_requests(tmp_path: Path) -> None:
    env = {"GPU_SIM_FIXED_MS": "5", "GPU_SIM_PER_ITEM_MS": "0"}
    gateway_env = {
        "GATEWAY_NVML": "false",
        # One request a call, and large calls not taken for hung ones.
        "GATEWAY_BATCHING": json.dumps({"gpu_sim": {"max_batch_size": 1}}),
        "GATEWAY_OUTLIER_MIN_S": "60",
    }
    options = [
        ("grpc.max_send_message_length", 64 * MIB),
        ("grpc.max_receive_message_length", 64 * MIB),
    ]
    with start_triton(MODEL_REPOSITORY, tmp_path / "triton", env=env) as triton:
        args = ["--triton", triton.grpc_url, "--no-cpu-models"]
        with (
            start_gateway(tmp_path / "gw", args=args, env=gateway_env) as gw,
            grpc.insecure_channel(gw.address, options=options) as channel,
        ):
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            small, large = gpu_sim_request(4), gpu_sim_request(8 * MIB)  # 32 MiB of FP32
            for _ in range(20):
                call(small, timeout=30)
            time.sleep(0.5)
            before = rss_bytes(gw.pid)
            peak = before
            done = threading.Event()

            def watch() -> None:
                nonlocal peak
                while not done.wait(0.05):
                    peak = max(peak, rss_bytes(gw.pid))

            watcher = threading.Thread(target=watch)
            watcher.start()
            codes = []
            try:
                with ThreadPoolExecutor(REQUESTS) as pool:
                    for future in [pool.submit(call, large, timeout=120) for _ in range(REQUESTS)]:
                        try:
                            future.result()
                            codes.append("OK")
                        except grpc.RpcError as exc:
                            codes.append(exc.code().name)  # held memory either way
            finally:
                done.set()
                watcher.join()
            assert codes.count("OK") >= 1, codes
            assert peak - before > 4 * 32 * MIB  # the spike did take memory
            give_up = time.monotonic() + RETURNED_WITHIN_S
            while rss_bytes(gw.pid) - before > RETURNED_WITHIN_BYTES:
                assert time.monotonic() < give_up, (
                    f"RSS {rss_bytes(gw.pid) / MIB:.0f} MiB, {before / MIB:.0f} MiB before "
                    f"the spike, {peak / MIB:.0f} MiB at its peak"
                )
                time.sleep(0.2)
            call(small, timeout=30)  # and still serves
