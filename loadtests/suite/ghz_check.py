"""Run every ghz command the repository documents, and every ghz config, with the real ghz.

    python -m loadtests.suite.ghz_check        # writes loadtests/results/ghz_configs.md

The commands are the lines starting with ``ghz`` in the code blocks of README.md
and loadtests/ghz/README.md; the configs are loadtests/ghz/*.json (one not named
by any documented command runs as ``ghz --config FILE``).  They run as written,
with two changes that the report shows: the address becomes a local gateway's
(documented addresses are examples, and load goes to loopback only), and
``-O json`` is added so the outcome can be read.  The gateway serves the CPU demo
models and, in front of a real Triton, ``gpu_sim`` (5 ms + 0.1 ms/row, one
instance): the profiles' load levels are for real deployments, so on a small
machine an open-loop profile may overload it, which the report shows as it is.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtests.suite.load import find_ghz
from loadtests.suite.payloads import ADD_SUB
from loadtests.suite.procs import Fleet, exit_on_sigterm
from loadtests.suite.servers import infer_ok
from tests.support.triton import MODEL_REPOSITORY, start_triton

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "loadtests" / "ghz" / "README.md"]
CONFIGS = sorted((REPO / "loadtests" / "ghz").glob("*.json"))
RESULTS = REPO / "loadtests" / "results" / "ghz_configs.md"
_ADDRESS = re.compile(r"^[\w.-]+:\d+$")

#: What the hand check found wrong before, and how it was fixed (kept with the results).
FINDINGS = [
    "loadtests/ghz/README.md showed `ghz --config loadtests/ghz/mlp_classifier.json --host "
    "10.0.0.7:8001`: ghz answers `ghz: error: unknown long flag '--host'` (exit 1). The "
    "address is ghz's positional argument; the example now reads `... mlp_classifier.json "
    "127.0.0.1:9001`.",
    "mlp_classifier.json and gpu_sim_priority.json run for a duration; at the end ghz "
    'cancelled the calls in flight and counted them as `Unavailable` ("use of closed network '
    'connection"): 47 of 748 calls in a 2 s run that had no server error. Both now set '
    '`"duration-stop": "wait"`, and a rerun counts no such errors.',
    "ghz 0.121's `-x/--max-duration` drops the `-n` bound (the run goes on to the duration), "
    "so the benchmark suite bounds each run by `-n` and its own watchdog instead.",
    "The top-level README had no ghz command; its Measurements section now has one, checked "
    "here with the rest.",
]


@dataclass
class Outcome:
    source: str
    documented: str
    ran: str
    exit_code: int
    summary: str
    verdict: str


def documented_commands() -> list[tuple[str, str]]:
    """``(file, command)`` for every line of a code block that starts with ``ghz``."""
    found = []
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            text = line.strip()
            if line.startswith("    ") and text.startswith("ghz "):
                command = text.split("  #", 1)[0].strip()
                found.append((str(doc.relative_to(REPO)), command))
    return found


def localise(command: str, ghz: Path, address: str) -> list[str]:
    """The command with the real binary, the local address, and a JSON report."""
    argv = shlex.split(command)
    argv[0] = str(ghz)
    replaced = [address if _ADDRESS.match(token) else token for token in argv]
    if replaced == argv:
        replaced.append(address)
    if "-O" not in replaced and not any(t.startswith("--format") for t in replaced):
        replaced[1:1] = ["-O", "json"]
    return replaced


def _outcome(source: str, documented: str, argv: list[str]) -> Outcome:
    shown = shlex.join(["ghz", *argv[1:]])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    except subprocess.TimeoutExpired:
        return Outcome(source, documented, shown, -1, "still running after 120 s", "FAIL")
    if done.returncode != 0 or not done.stdout.strip().startswith("{"):
        error = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
        return Outcome(source, documented, shown, done.returncode, " ".join(error), "FAIL")
    report = json.loads(done.stdout)
    statuses = report.get("statusCodeDistribution") or {}
    p50 = next(
        (
            e["latency"] / 1e6
            for e in report.get("latencyDistribution") or []
            if e["percentage"] == 50
        ),
        float("nan"),
    )
    summary = (
        f"{report['count']} calls in {report['total'] / 1e9:.1f} s ({report['rps']:.0f}/s), "
        f"p50 {p50:.2f} ms, statuses {statuses}"
    )
    errors = report.get("errorDistribution") or {}
    if errors:
        worst = max(errors.items(), key=lambda item: item[1])
        summary += f"; most frequent error ({worst[1]}x): {worst[0][:160]}"
    verdict = "PASS" if statuses and set(statuses) == {"OK"} else "runs; server errors shown"
    return Outcome(source, documented, shown, done.returncode, summary, verdict)


def check(workdir: Path, ghz: Path) -> list[Outcome]:
    outcomes = []
    with Fleet(workdir) as fleet:
        triton = start_triton(MODEL_REPOSITORY, workdir / "triton")
        fleet.adopt("tritonserver", triton.stop, triton.pid)
        port_file = workdir / "gateway.port"
        env = {"GATEWAY_TRITON_METRICS_URLS": json.dumps({triton.grpc_url: triton.metrics_url})}
        gateway = fleet.launch(
            "gateway",
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", "0",
             "--port-file", str(port_file), "--triton", triton.grpc_url, "--log-level", "WARNING"],
            ready=lambda address: infer_ok(address, ADD_SUB),
            port_file=port_file,
            env=env,
            cwd=REPO,
        )  # fmt: skip
        commands = documented_commands()
        named = " ".join(command for _, command in commands)
        for config in CONFIGS:
            if config.name not in named:
                rel = config.relative_to(REPO)
                commands.append((str(rel), f"ghz --config {rel}"))
        for source, command in commands:
            print(f"ghz_check: {command}", flush=True)
            outcomes.append(_outcome(source, command, localise(command, ghz, gateway.address)))
    return outcomes


def write(outcomes: list[Outcome], version: str) -> None:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# ghz commands and configurations, checked with the real ghz",
        "",
        f"`python -m loadtests.suite.ghz_check` · ghz {version} · {date}. Each documented "
        "command ran as written, against a local gateway (CPU demo models, and `gpu_sim` on a "
        "real Triton at 5 ms + 0.1 ms/row), with the address made local and `-O json` added.",
        "",
        "## Found and fixed",
        "",
        *(f"- {finding}" for finding in FINDINGS),
        "",
        "## Outcomes",
        "",
        "| where | documented | ran | outcome | verdict |",
        "|---|---|---|---|---|",
        *(
            f"| {o.source} | `{o.documented}` | `{o.ran}` | exit {o.exit_code}: "
            f"{o.summary.replace('|', '/')} | **{o.verdict}** |"
            for o in outcomes
        ),
        "",
        "`gpu_sim_priority.json` is an open-loop profile at 2,000 requests/s for a GPU "
        "deployment. On a 2-core machine that also runs ghz and Triton, its 128 workers "
        "cannot keep that rate, and the gateway answers DEADLINE_EXCEEDED at once for the "
        "requests it predicts cannot finish within their 500 ms `timeout` parameter (see the "
        "row above): overload shed early, as the profile means to show.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))


def main() -> int:
    exit_on_sigterm()
    ghz = find_ghz()
    if ghz is None:
        print("ghz_check: ghz not found ($GHZ, PATH, ../shared/tools/ghz)", file=sys.stderr)
        return 2
    done = subprocess.run([ghz, "--version"], capture_output=True, text=True, check=False)
    with tempfile.TemporaryDirectory(prefix="ghz-check-") as tmp:
        outcomes = check(Path(tmp), ghz)
    write(outcomes, (done.stdout + done.stderr).strip())
    print(RESULTS.read_text())
    return 0 if all(o.verdict != "FAIL" for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
