"""Where the gateway's CPU goes per request: py-spy under ghz load (``make bench-profile``).

    python -m loadtests.suite.profile [--path passthrough|batching|cpu|stream] [--seconds 15]

Starts the suite's Triton and the gateway as the suite does, drives the chosen path
with ghz at concurrency 64 (``batching``: the gateway batching ``gpu_sim`` at 256, as
the suite's batching route; ``stream``: the CPU model over ``ModelStreamInfer``, 16
streams of 100 messages, as the suite's stream route) and samples the gateway with
``py-spy record`` (a dev tool, not a dependency: ``make bench-profile`` installs it
into the venv).  Writes
``loadtests/results/profile_<path>.md`` and an SVG flamegraph ``profile_<path>.svg``.

py-spy samples *runnable* threads, not CPU time: on a machine with more runnable
threads than cores, a thread the kernel preempted is counted wherever it stopped,
for as long as it waits, so one recording can show a cheap line at 5-20 %.  The
tables therefore give, per frame, the median share over ``--recordings`` separate
recordings: a frame that is hot in only one of them does not make the table.

Reading the tables: a percentage is a share of the samples in which some thread of
the gateway was running (py-spy leaves idle threads out).  *Self* is the frame on
top of the stack.  Frames without Python source (grpc's Cython layer, protobuf's
C parser) do not appear: their time is charged to the nearest Python frame, which
for grpc.aio callbacks is asyncio's ``Handle._run`` and, for the thread that polls
grpc's completion queue, ``Thread.run``.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests.suite.load import Ghz, find_ghz
from loadtests.suite.payloads import ADD_SUB, GPU_SIM
from loadtests.suite.procs import Fleet, exit_on_sigterm
from loadtests.suite.servers import STREAMS, gateway_server, gateway_triton_env, triton_server

RESULTS = Path(__file__).resolve().parents[1] / "results"
_LINE = re.compile(r":\d+\)$")
_STDLIB = re.compile(r"/lib/python3\.\d+/(.*)")


def _frame(raw: str) -> str:
    """``func (/long/path/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``: one row per function."""
    name, sep, path = _LINE.sub(")", raw).partition(" (")
    if not sep:
        return raw
    path = path.removesuffix(")")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif stdlib := _STDLIB.search(path):
        path = f"stdlib/{stdlib.group(1)}"
    else:
        for package in ("gateway/", "scheduler/", "loadtests/"):
            if f"/{package}" in path:
                path = package + path.split(f"/{package}", 1)[1]
                break
    return f"{name} ({path})"


Shares = dict[str, float]


def shares(collapsed: Path) -> tuple[int, Shares, Shares]:
    """Samples in one recording, and each frame's self and inclusive share (%) of them."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return (
        total,
        {frame: 100 * n / total for frame, n in own.items()},
        {frame: 100 * n / total for frame, n in inclusive.items()},
    )


def median_shares(recordings: list[Shares]) -> list[tuple[str, float]]:
    """Each frame's median share over the recordings (absent = 0), largest first."""
    frames = set().union(*recordings)
    medians = {f: statistics.median(r.get(f, 0.0) for r in recordings) for f in frames}
    return sorted(medians.items(), key=lambda item: -item[1])


def record(pid: int, seconds: int, fmt: str, out: Path) -> None:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is missing: `make bench-profile` installs it into the venv")
    subprocess.run(
        [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
         "--nonblocking", "--format", fmt, "-o", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip


def profile(path: str, seconds: int, recordings: int, workdir: Path) -> Path:
    ghz_binary = find_ghz()
    if ghz_binary is None:
        raise SystemExit("ghz not found ($GHZ, PATH, ../shared/tools/ghz)")
    with Fleet(workdir) as fleet:
        payload = GPU_SIM if path == "batching" else ADD_SUB
        if path in ("passthrough", "batching"):
            triton = triton_server(fleet)
            args = ["--triton", triton.grpc_url, "--no-cpu-models"]
            address, pid = gateway_server(
                fleet, "gateway", args, gateway_triton_env(triton), ADD_SUB
            )
        else:
            args = ["--cpu-model", "builtin:add_sub"]
            address, pid = gateway_server(fleet, "gateway", args, {}, ADD_SUB)
        ghz = Ghz(ghz_binary, workdir)
        concurrency, messages = (STREAMS, 100) if path == "stream" else (64, None)
        if path == "batching":
            concurrency = 256
        calls = 3000 // (messages or 1)
        ghz.run(  # warm-up
            address, payload, concurrency=concurrency, total=calls, max_s=120,
            stream_messages=messages,
        )  # fmt: skip
        command = ghz.command(
            address, payload, concurrency=concurrency, total=10_000_000, stream_messages=messages
        )
        load = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fleet.adopt("ghz", load.kill)  # stopped first: the servers go after it
        svg = RESULTS / f"profile_{path}.svg"
        collected = []
        for number in range(recordings):
            collapsed = workdir / f"stacks-{number}.txt"
            record(pid, seconds, "raw", collapsed)
            collected.append(shares(collapsed))
        record(pid, seconds, "flamegraph", svg)
    total = sum(samples for samples, _, _ in collected)
    own = median_shares([own for _, own, _ in collected])
    inclusive = median_shares([inclusive for _, _, inclusive in collected])
    out = RESULTS / f"profile_{path}.md"
    rows = [f"| {share:.1f} % | `{frame}` |" for frame, share in own[:25]]
    interesting = ("gateway/", "scheduler/", "tritonclient/", "grpc/", "prometheus_client/")
    incl = [f"| {s:.1f} % | `{f}` |" for f, s in inclusive if any(k in f for k in interesting)]
    out.write_text(
        "\n".join(
            [
                f"# Gateway CPU profile: {path} path, ghz c={concurrency}, {payload.model}"
                + (f", {messages} messages per stream" if messages else ""),
                "",
                f"`python -m loadtests.suite.profile --path {path} --seconds {seconds} "
                f"--recordings {recordings}` · py-spy record, 200 Hz, {total} samples of "
                f"runnable threads in all; each share is the median over the {recordings} "
                f"recordings · flamegraph (one recording): "
                f"[profile_{path}.svg](profile_{path}.svg). See the module docstring for how to "
                "read it: grpc's Cython and C time shows up as `Handle._run` (callbacks on the "
                "event loop) and `Thread.run` (grpc's completion-queue poller).",
                "",
                "## Self time (top of stack)",
                "",
                "| share | frame |",
                "|---|---|",
                *rows,
                "",
                "## Inclusive time, gateway / scheduler / grpc / tritonclient / prometheus frames",
                "",
                "| share | frame |",
                "|---|---|",
                *incl[:40],
                "",
            ]
        )
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--path", choices=["passthrough", "batching", "cpu", "stream"], default="passthrough"
    )
    parser.add_argument("--seconds", type=int, default=10, help="per recording")
    parser.add_argument("--recordings", type=int, default=3, help="median over this many")
    args = parser.parse_args()
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        out = profile(args.path, args.seconds, args.recordings, Path(tmp))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
