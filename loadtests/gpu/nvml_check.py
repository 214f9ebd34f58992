"""Check NvmlProvider on a real GPU: idle, under an ~8 GiB bf16 matmul load, and after freeing.

For a one-GPU machine that has python3 with numpy, pynvml and torch (none of this
project's other dependencies)::

    PYTHONPATH=. python3 loadtests/gpu/nvml_check.py --out DIR

Phases: sample idle; allocate ``--gib`` GiB on cuda:0 and run bf16 matmuls for
``--load-s`` seconds while a thread samples every ``--interval`` seconds; free
everything (``empty_cache``) and sample again. Writes ``DIR/nvml_check.json`` and
prints a short summary. Exit status: 0 when every check passed, 1 when a check
failed or the load phase broke, 2 when there is no GPU (NVML sees none, or torch has
no CUDA). The whole run is bounded: a watchdog ends it after ``--limit-s`` seconds.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scheduler.telemetry.nvml import NvmlProvider
from scheduler.telemetry.snapshot import DeviceSnapshot

GIB = 1024**3


def _reading(device: DeviceSnapshot, start: float) -> dict[str, Any]:
    return {
        "t_s": round(device.sampled_at - start, 3),
        "memory_used_bytes": device.memory_used_bytes,
        "memory_free_bytes": device.memory_free_bytes,
        "utilization": device.utilization,
        "memory_utilization": device.memory_utilization,
        "power_w": device.power_w,
        "processes": [list(p) for p in device.processes],
    }


class Sampler:
    """Samples one GPU (by UUID) every ``interval_s`` on a thread until stopped."""

    def __init__(self, provider: NvmlProvider, uuid: str, start: float, interval_s: float) -> None:
        self._provider, self._uuid, self._start = provider, uuid, start
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self.readings: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def read_once(self) -> dict[str, Any]:
        for device in self._provider.sample(time.monotonic()).devices:
            if device.uuid == self._uuid:
                return _reading(device, self._start)
        raise RuntimeError(f"NVML no longer reports {self._uuid}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.readings.append(self.read_once())
            except Exception as exc:  # keep sampling; the summary says what went wrong
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self._interval_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _torch_uuid(torch: Any) -> str | None:
    uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None)
    return None if uuid is None else f"GPU-{uuid}"


def _load_phase(args: argparse.Namespace, sampler: Sampler) -> dict[str, Any]:
    import torch  # type: ignore[import-not-found, unused-ignore]

    if not torch.cuda.is_available():
        raise SystemExit(
            "FAIL: NVML sees a GPU but torch has no CUDA device (CUDA_VISIBLE_DEVICES?)"
        )
    device = torch.device("cuda:0")
    free_bytes, _ = torch.cuda.mem_get_info(device)
    # Leave headroom on a busy or small GPU rather than dying of an OOM.
    alloc_bytes = min(int(args.gib * GIB), int(free_bytes * 0.8))
    side = 8192
    matrix_bytes = side * side * 2
    buffer = torch.ones(max(0, alloc_bytes - 3 * matrix_bytes), dtype=torch.uint8, device=device)
    a = torch.randn(side, side, dtype=torch.bfloat16, device=device)
    b = torch.randn(side, side, dtype=torch.bfloat16, device=device)
    c = torch.empty(side, side, dtype=torch.bfloat16, device=device)
    torch.cuda.synchronize()
    flops = 0
    with sampler:
        began = time.monotonic()
        until = began + args.load_s
        while time.monotonic() < until:
            for _ in range(8):
                torch.matmul(a, b, out=c)
            torch.cuda.synchronize()  # bounds the queue so the loop ends on time
            flops += 8 * 2 * side**3
        load_s = time.monotonic() - began
    loaded = list(sampler.readings)
    allocated = int(torch.cuda.memory_allocated(device))
    del buffer, a, b, c
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    time.sleep(1.0)  # NVML memory figures follow the free promptly; utilization lags ~1 s
    return {
        "torch": torch.__version__,
        "torch_uuid": _torch_uuid(torch),
        "requested_bytes": alloc_bytes,
        "torch_allocated_bytes": allocated,
        "bf16_tflops": round(flops / load_s / 1e12, 1),
        "loaded": loaded,
        "sampler_errors": sampler.errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for nvml_check.json")
    parser.add_argument("--gib", type=float, default=8.0, help="GiB to allocate (default 8)")
    parser.add_argument("--load-s", type=float, default=6.0, help="seconds of matmuls (default 6)")
    parser.add_argument("--interval", type=float, default=0.5, help="sampling interval, s")
    parser.add_argument("--limit-s", type=float, default=58.0, help="watchdog, s (default 58)")
    args = parser.parse_args(argv)
    faulthandler.dump_traceback_later(args.limit_s, exit=True)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / "nvml_check.json"
    start = time.monotonic()
    summary: dict[str, Any] = {"ok": False, "pid": os.getpid()}

    provider = NvmlProvider()
    try:
        devices = provider.sample(start).devices
        if not devices:
            summary["error"] = "NVML found no GPU (see the log line above)"
            out_file.write_text(json.dumps(summary, indent=2))
            print(f"FAIL: {summary['error']}; wrote {out_file}", file=sys.stderr)
            return 2
        gpu = devices[0]
        summary["device"] = {"name": gpu.name, "uuid": gpu.uuid, "count": len(devices)}
        summary["memory_total_bytes"] = gpu.memory_total_bytes
        sampler = Sampler(provider, gpu.uuid, start, args.interval)
        summary["idle"] = [sampler.read_once() for _ in range(3)]
        try:
            summary.update(_load_phase(args, sampler))
        except SystemExit as exc:
            summary["error"] = str(exc)
            out_file.write_text(json.dumps(summary, indent=2))
            print(exc, file=sys.stderr)
            return 2
        except Exception as exc:  # report what broke, with the readings so far
            summary["error"] = f"{type(exc).__name__}: {exc}"
        summary["after_free"] = [sampler.read_once() for _ in range(2)]
    finally:
        provider.close()
    return _finish(summary, out_file, time.monotonic() - start)


def _finish(summary: dict[str, Any], out_file: Path, elapsed_s: float) -> int:
    def used(phase: str, pick: Any = max) -> int | None:
        values = [r["memory_used_bytes"] for r in summary.get(phase, [])]
        values = [v for v in values if v is not None]
        return pick(values) if values else None

    idle, loaded, after = used("idle", min), used("loaded"), used("after_free", min)
    utils = [r["utilization"] for r in summary.get("loaded", []) if r["utilization"] is not None]
    powers = [r["power_w"] for r in summary.get("loaded", []) if r["power_w"] is not None]
    pids = sorted({p[0] for r in summary.get("loaded", []) for p in r["processes"]})
    requested = summary.get("requested_bytes", 0)
    summary["result"] = {
        "memory_used_idle_bytes": idle,
        "memory_used_loaded_max_bytes": loaded,
        "memory_used_after_free_bytes": after,
        "utilization_max": max(utils, default=None),
        "power_w_max": max(powers, default=None),
        "power_w_idle": summary.get("idle", [{}])[0].get("power_w"),
        "pids_seen": pids,
        "own_pid_seen": summary["pid"] in pids,
        "uuid_matches_torch": summary.get("torch_uuid") in (None, summary["device"]["uuid"]),
        "elapsed_s": round(elapsed_s, 1),
    }
    checks = {
        "memory_rose": (
            idle is not None and loaded is not None and loaded - idle >= 0.9 * requested > 0
        ),
        "memory_fell_after_free": (
            loaded is not None and after is not None and loaded - after >= 0.8 * requested
        ),
        "utilization_seen": bool(utils) and max(utils) >= 0.5,
        "no_error": "error" not in summary,
    }
    summary["checks"] = checks
    summary["ok"] = all(checks.values())
    out_file.write_text(json.dumps(summary, indent=2))
    r, gib = summary["result"], float(GIB)

    def g(value: int | None) -> str:
        return "?" if value is None else f"{value / gib:.2f} GiB"

    print(f"{summary['device']['name']} {summary['device']['uuid']}")
    print(f"memory used: idle {g(idle)}, loaded {g(loaded)}, after free {g(after)}")
    print(
        f"utilization max {r['utilization_max']}, power idle {r['power_w_idle']} W, "
        f"max {r['power_w_max']} W; pids seen {pids} (own pid seen: {r['own_pid_seen']})"
    )
    print(f"bf16 {summary.get('bf16_tflops', '?')} TFLOP/s; {r['elapsed_s']} s; checks {checks}")
    print(("OK" if summary["ok"] else "FAIL") + f": wrote {out_file}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
