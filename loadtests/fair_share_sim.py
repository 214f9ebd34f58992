"""The tenants scenario on a virtual clock: the batch queue's order alone, no CPU.

    python -m loadtests.fair_share_sim [--seconds 20] [--shares Q N]

The live measurement (``loadtests.tenants_bench``) mixes two effects on a
shared 2-core machine: the order in which queued requests are batched, and
the CPU the gateway spends refusing the noisy tenant. This replays the same
traffic through the real ``BatchQueue`` and ``TenantQuota`` on a 1 ms tick:
one backend, one batch at a time, 50 ms a batch of at most 4 rows, a 2 ms
queue delay; tenant "quiet" has 4 closed-loop callers (1 ms between an answer
and the next request), tenant "noisy" sends open-loop every 1/rate s through
a quota of 20/s with a burst of 20, both with 5 s deadlines. As in the live
bench, one queue and one quota see three phases in a row: noisy silent, at
20/s, at 200/s. They run once with tenants in the queue (fair share) and once
without (every item's tenant "", the queue's earliest-deadline-first order as
before); with ``--shares Q N`` once more with those fair shares for quiet and
noisy. Deterministic: the same figures every run.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np

from scheduler.batching.policy import BatchingPolicy
from scheduler.batching.queue import BatchQueue, QueueItem
from scheduler.errors import ResourceExhausted
from scheduler.quota import QuotaLimits, TenantQuota

TICK_S = 0.001
BATCH_S = 0.050
CALLERS = 4
NOISY_LIMITS = QuotaLimits(rate_per_s=20, burst=20)


@dataclass
class Outcome:
    quiet_s: list[float] = field(default_factory=list)
    noisy_ok: int = 0
    noisy_refused: int = 0


def simulate(
    rates: list[float], seconds: float, *, fair: bool, shares: tuple[float, float] = (1.0, 1.0)
) -> list[Outcome]:
    """One ``Outcome`` per phase of ``seconds``, noisy sending at ``rates[i]``."""
    queue: BatchQueue[tuple[str, float]] = BatchQueue(
        BatchingPolicy(max_batch_size=4, max_queue_delay_us=2000)
    )
    quota = TenantQuota("noisy", NOISY_LIMITS, 0.0)
    outcomes = [Outcome() for _ in rates]
    quiet_next = [0.0] * CALLERS  # when each quiet caller sends next
    noisy_next = 0.0
    busy_until, running = 0.0, ()  # type: ignore[var-annotated]

    def push(tenant: str, sent_at: float, now: float) -> None:
        item = QueueItem((tenant, sent_at), rows=1, key="k", deadline=now + 5.0)
        item.tenant = tenant if fair else ""
        item.share = shares[0] if tenant == "quiet" else shares[1]
        queue.push(item, now)

    ticks_per_phase = round(seconds / TICK_S)
    for tick in range(ticks_per_phase * len(rates)):
        now = tick * TICK_S
        phase = tick // ticks_per_phase
        out, noisy_rate = outcomes[phase], rates[phase]
        if running and now >= busy_until:
            for item in running:
                tenant, sent_at = item.payload
                if tenant == "quiet":
                    out.quiet_s.append(now - sent_at)
                    caller = quiet_next.index(-1.0)
                    quiet_next[caller] = now + 0.001
                else:
                    out.noisy_ok += 1
            running = ()
            queue.note_completion(now)
        for caller, at in enumerate(quiet_next):
            if 0 <= at <= now:
                quiet_next[caller] = -1.0  # waiting for its answer
                push("quiet", now, now)
        if not noisy_rate:
            noisy_next = now
        while noisy_rate and noisy_next <= now:
            noisy_next += 1 / noisy_rate
            try:
                quota.acquire(now)
            except ResourceExhausted:
                out.noisy_refused += 1
                continue
            quota.release()  # the in-flight count is not limited here
            push("noisy", now, now)
        if not running:
            step = queue.step(now, in_flight=0, capacity=1, ahead=0)
            if step.batches:
                running = step.batches[0].items
                busy_until = now + BATCH_S
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="virtual time per run")
    parser.add_argument("--shares", type=float, nargs=2, metavar=("QUIET", "NOISY"))
    args = parser.parse_args()
    print("| queue order | noisy sends | quiet p50 | quiet p99 | noisy OK/s | noisy refused/s |")
    print("|---|---|---|---|---|---|")
    rates = [0.0, 20.0, 200.0]
    runs: list[tuple[str, bool, tuple[float, float]]] = [
        ("EDF (before)", False, (1.0, 1.0)),
        ("fair share", True, (1.0, 1.0)),
    ]
    if args.shares:
        quiet, noisy = args.shares
        runs.append((f"fair share {quiet:g}:{noisy:g}", True, (quiet, noisy)))
    for name, fair, shares in runs:
        outcomes = simulate(rates, args.seconds, fair=fair, shares=shares)
        for rate, result in zip(rates, outcomes, strict=True):
            p50, p99 = np.percentile(np.array(result.quiet_s) * 1e3, [50, 99])
            ok_per_s = result.noisy_ok / args.seconds
            refused_per_s = result.noisy_refused / args.seconds
            print(
                f"| {name} | {rate:.0f}/s | {p50:.0f} ms "
                f"| {p99:.0f} ms | {ok_per_s:.1f} | {refused_per_s:.1f} |"
            )


if __name__ == "__main__":
    main()
