"""A discrete-event simulator of the gateway's scheduler (``python -m scheduler.sim``).

It drives the real batch queue, candidate tables, estimator, circuit
breakers and routing policies on a virtual clock, against simulated devices
(``devices``), workloads (``workload``) and several gateway replicas
(``replica``), and reports SLO attainment, goodput, latency, utilization and
spillover per policy (``report``).
"""
