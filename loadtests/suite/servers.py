"""The fleet under test, and the routes a request takes through it.

One ``tritonserver`` (tests/models/triton) serves every Triton model; its simulated
GPU models cost 2 ms + 20 us per row (``GPU_SIM_FIXED_MS`` / ``GPU_SIM_PER_ITEM_MS``),
one instance, max batch 64.  In front of it, or beside it:

- gateway T: ``--triton`` only; it does not batch ``add_sub`` (passthrough, via
  ``batching_layer_by_model``) and batches ``gpu_sim`` itself with the same 2 ms
  queue delay that ``gpu_sim_tb`` gives Triton's own batcher;
- gateway C: the CPU built-in ``add_sub`` only (``--workers 1`` when the CLI has it);
- gateway C2: the same with ``--workers 2``, when the CLI has the setting; the
  workers comparison drives C and C2 over ``WORKER_CONNECTIONS`` connections each;
- floor A (canned reply, also the stream floor) and floor B (bytes proxy to the
  Triton), see ``floors``;
- MLServer, when ``loadtests/.mlserver-venv`` holds it (``make mlserver``).

A :class:`Route` names the address and model a load run targets, the process whose
CPU is charged to the route (its *front*), and the Triton behind it, if any.  Every
server is started through :class:`~loadtests.suite.procs.Fleet`, on a free loopback
port, and is ready only once a real ``ModelInfer`` through it succeeds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from loadtests.suite.payloads import ADD_SUB, GPU_SIM, GPU_SIM_TB, Payload
from loadtests.suite.procs import Fleet
from tests.support.triton import MODEL_REPOSITORY, TritonProcess, free_ports, start_triton

__all__ = [
    "GPU_COST",
    "MLSERVER_VENV",
    "Route",
    "floor_server",
    "gateway_server",
    "gateway_triton_env",
    "infer_ok",
    "start_fleet",
    "triton_server",
    "workers_supported",
]

REPO = Path(__file__).resolve().parents[2]
MLSERVER_VENV = REPO / "loadtests" / ".mlserver-venv"
GPU_COST = {"GPU_SIM_FIXED_MS": "2", "GPU_SIM_PER_ITEM_MS": "0.02"}
#: ghz streams open at once on the stream route; each carries ``stream_messages``.
STREAMS = 16
#: ghz connections on the workers routes (the kernel balances connections).
WORKER_CONNECTIONS = 8


@dataclass(frozen=True)
class Route:
    """Where one kind of load goes, and whose CPU it is charged to."""

    key: str
    label: str
    target: str
    payload: Payload
    front: str  # what the front process is: "gateway", "Triton", "floor B", ...
    front_pid: int
    triton_pid: int | None = None  # the Triton behind the front, when there is one
    levels: tuple[int, ...] = (1, 64)
    stream_messages: int | None = None
    #: ghz connections for this route (None: the suite's ``--connections``).
    connections: int | None = None


@dataclass
class FleetInfo:
    """What was started, and what could not be, in words for the report."""

    routes: list[Route] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workers: bool = False
    mlserver: str | None = None  # its version, when it ran


def infer_ok(address: str, payload: Payload) -> bool:
    """True when a ModelInfer of ``payload`` through ``address`` succeeds."""
    with grpc.insecure_channel(address) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer"
        )
        try:
            call(payload.request_bytes(), timeout=2)
        except grpc.RpcError:
            return False
    return True


def workers_supported() -> bool:
    """Whether ``inference-gateway serve`` accepts ``--workers`` (being added in issue 8)."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    return "--workers" in done.stdout


def gateway_server(
    fleet: Fleet, name: str, args: list[str], env: dict[str, str], probe: Payload
) -> tuple[str, int]:
    """Start ``inference-gateway serve`` with ``args``; return its address and PID."""
    port_file = fleet.workdir / f"{name}.port"
    command = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", "0"]
    server = fleet.launch(
        name,
        [*command, "--port-file", str(port_file), "--log-level", "WARNING", *args],
        ready=lambda address: infer_ok(address, probe),
        port_file=port_file,
        env=env,
        cwd=REPO,
    )
    return server.address, server.pid


def floor_server(fleet: Fleet, name: str, args: list[str]) -> tuple[str, int]:
    """Start a floor (``floors``) with ``args``; return its address and PID."""
    port_file = fleet.workdir / f"{name}.port"
    server = fleet.launch(
        name,
        [sys.executable, "-m", "loadtests.suite.floors", *args, "--port-file", str(port_file)],
        ready=lambda address: infer_ok(address, ADD_SUB),
        port_file=port_file,
        cwd=REPO,
    )
    return server.address, server.pid


def _mlserver(fleet: Fleet) -> tuple[str, int, str] | None:
    """Start MLServer with add_sub on free ports; None when it is not installed."""
    binary = MLSERVER_VENV / "bin" / "mlserver"
    if not binary.is_file():
        return None
    version = subprocess.run(
        [MLSERVER_VENV / "bin" / "python", "-c", "import mlserver; print(mlserver.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    folder = fleet.workdir / "mlserver"
    model = folder / "add_sub"
    model.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port = free_ports(2)
    settings = {
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_endpoint": None,
        # Inference in the server process: for a trivial model, MLServer's cheapest setup
        # (its default hands every request to a worker process over a queue).
        "parallel_workers": 0,
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": "add_sub",
        "implementation": "loadtests.suite.mlserver_model.AddSub",
        "parameters": {"version": "1"},
    }
    (model / "model-settings.json").write_text(json.dumps(model_settings))
    address = f"127.0.0.1:{grpc_port}"
    server = fleet.launch(
        "mlserver",
        [str(binary), "start", str(folder)],
        ready=lambda target: infer_ok(target, ADD_SUB),
        address=address,
        env={"PYTHONPATH": str(REPO)},
        cwd=folder,
        timeout_s=120,
    )
    return address, server.pid, version or "unknown"


def triton_server(fleet: Fleet) -> TritonProcess:
    """The suite's tritonserver (GPU-shaped models at :data:`GPU_COST`), stopped by ``fleet``."""
    triton = start_triton(MODEL_REPOSITORY, fleet.workdir / "triton", env=GPU_COST)
    fleet.adopt("tritonserver", triton.stop, triton.pid)
    return triton


def gateway_triton_env(triton: TritonProcess) -> dict[str, str]:
    """Gateway T's settings: add_sub passed through, gpu_sim batched like gpu_sim_tb."""
    return {
        "GATEWAY_BATCHING_LAYER_BY_MODEL": json.dumps({"add_sub": "none"}),
        "GATEWAY_DEFAULT_MAX_QUEUE_DELAY_US": "2000",
        "GATEWAY_TRITON_METRICS_URLS": json.dumps({triton.grpc_url: triton.metrics_url}),
    }


def start_fleet(fleet: Fleet, *, stream_messages: int) -> FleetInfo:
    """Start every server of the suite in ``fleet`` and return the routes through them."""
    info = FleetInfo()
    triton = triton_server(fleet)
    tpid = triton.pid
    env_t = gateway_triton_env(triton)
    gw_t, gw_t_pid = gateway_server(
        fleet, "gateway-triton", ["--triton", triton.grpc_url, "--no-cpu-models"], env_t, ADD_SUB
    )
    info.workers = workers_supported()
    cpu_args = ["--cpu-model", "builtin:add_sub"]
    gw_c, gw_c_pid = gateway_server(
        fleet, "gateway-cpu", cpu_args + (["--workers", "1"] if info.workers else []), {}, ADD_SUB
    )
    floor_a, floor_a_pid = floor_server(fleet, "floor-a", ["canned"])
    floor_b, floor_b_pid = floor_server(fleet, "floor-b", ["proxy", "--target", triton.grpc_url])
    gpu = (1, 256)
    info.routes += [
        Route("triton", "Triton direct", triton.grpc_url, ADD_SUB, "Triton", tpid),
        Route(
            "passthrough",
            "gateway -> Triton (passthrough)",
            gw_t,
            ADD_SUB,
            "gateway",
            gw_t_pid,
            tpid,
        ),
        Route(
            "floor_b",
            "floor B: grpc.aio bytes proxy -> Triton",
            floor_b,
            ADD_SUB,
            "floor B",
            floor_b_pid,
            tpid,
        ),
        Route(
            "floor_a", "floor A: grpc.aio canned reply", floor_a, ADD_SUB, "floor A", floor_a_pid
        ),
        Route("cpu", "gateway, CPU add_sub", gw_c, ADD_SUB, "gateway", gw_c_pid),
        Route(
            "batching",
            "gateway batching -> Triton gpu_sim",
            gw_t,
            GPU_SIM,
            "gateway",
            gw_t_pid,
            tpid,
            gpu,
        ),
        Route(
            "triton_batcher",
            "Triton's batcher direct (gpu_sim_tb)",
            triton.grpc_url,
            GPU_SIM_TB,
            "Triton",
            tpid,
            None,
            gpu,
        ),
        Route(
            "stream",
            f"gateway ModelStreamInfer, CPU add_sub, {stream_messages} msgs/stream",
            gw_c,
            ADD_SUB,
            "gateway",
            gw_c_pid,
            None,
            (STREAMS,),
            stream_messages,
        ),
        Route(
            "stream_floor",
            f"stream floor: grpc.aio canned ModelStreamInfer, {stream_messages} msgs/stream",
            floor_a,
            ADD_SUB,
            "floor A",
            floor_a_pid,
            None,
            (STREAMS,),
            stream_messages,
        ),
    ]
    if info.workers:
        gw_c2, gw_c2_pid = gateway_server(
            fleet, "gateway-cpu-w2", [*cpu_args, "--workers", "2"], {}, ADD_SUB
        )
        # SO_REUSEPORT spreads connections, not calls: over one connection a
        # second worker would sit idle. Both sides of the comparison get the
        # same several connections, as many callers would bring.
        info.routes += [
            Route(
                key,
                f"{label}, CPU add_sub, {WORKER_CONNECTIONS} connections",
                address,
                ADD_SUB,
                "gateway",
                pid,
                None,
                (64,),
                connections=WORKER_CONNECTIONS,
            )
            for key, label, address, pid in (
                ("workers1", "gateway --workers 1", gw_c, gw_c_pid),
                ("workers2", "gateway --workers 2", gw_c2, gw_c2_pid),
            )
        ]
    else:
        info.notes.append(
            "workers: not available (`inference-gateway serve` has no --workers option yet)"
        )
    started = _mlserver(fleet)
    if started is None:
        info.notes.append(
            f"MLServer: not installed ({MLSERVER_VENV.relative_to(REPO)} is missing; "
            "`make mlserver` builds it); skipped"
        )
    else:
        address, pid, info.mlserver = started
        info.routes.append(
            Route(
                "mlserver",
                f"MLServer {info.mlserver}, add_sub runtime",
                address,
                ADD_SUB,
                "MLServer",
                pid,
            )
        )
    return info
