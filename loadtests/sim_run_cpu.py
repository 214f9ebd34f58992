"""CPU seconds of one simulation, and a digest of every request's outcome.

For A/B rounds of the simulator's speed on a shared machine: the process CPU
time of ``Simulation.run`` alone (no imports, no workload drawing, no
measuring), for the ``million`` fleet cut at ``--requests``; and a digest of
each request's finish time, backend and outcome, so two trees that print the
same digest made the same decisions, request by request (a stronger check
than the table's summary row). Then the CPU of a full collection once the
collector is back on, with the records released first (``Simulation.release``)
or, with ``--keep-records``, still held by the simulation's cycles.
Run it alternately from two trees:

    .venv/bin/python -m loadtests.sim_run_cpu --requests 100000
    cd BASE && PYTHONPATH=. VENV/bin/python -m loadtests.sim_run_cpu --requests 100000
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import time

from scheduler.sim.engine import Simulation
from scheduler.sim.scenarios import SCENARIOS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--policy", default="predicted_finish_time")
    parser.add_argument(
        "--keep-records",
        action="store_true",
        help="do not release the records before the collector's pass (as before sim3)",
    )
    args = parser.parse_args()
    gc.disable()  # as ``python -m scheduler.sim`` runs it
    simulation = Simulation(SCENARIOS["million"](requests=args.requests), args.policy)
    began = time.process_time()
    requests = simulation.run()
    took = time.process_time() - began
    outcomes = repr([(r.finished_at, r.backend, r.outcome) for r in requests]).encode()
    del requests
    if not args.keep_records:
        simulation.release()
    # What the collector costs once it is back on: its passes until the
    # garbage is gone, measured as one full collection.
    began = time.process_time()
    gc.enable()
    gc.collect()
    collected = time.process_time() - began
    print(
        f"{took:.2f} s CPU, digest {hashlib.sha1(outcomes).hexdigest()[:12]}; "
        f"then the collector: {collected:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
