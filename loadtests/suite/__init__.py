"""The benchmark suite: every path a request can take, beside its references, in one run.

``python -m loadtests.suite`` (``make bench-suite``) starts a real ``tritonserver``,
the gateway in the configurations that matter, two bare Python ``grpc.aio`` floors
and, where it is installed, MLServer; then it drives them all with ``ghz`` (the Go
load generator users run) in rounds that alternate between paths, and reports the
median of the rounds next to the targets of issue 8.

Modules, in the order a run uses them:

- ``procs``: start servers in their own process groups, stop every one of them
  on exit (Ctrl-C included), and read the CPU time of a whole process tree.
- ``payloads``: the request and canned-response bytes every path is sent.
- ``floors``: the two floors, runnable as ``python -m loadtests.suite.floors``.
- ``servers``: the fleet under test and the paths through it.
- ``load``: one bounded load run with ghz, or with the project's Python
  generator when ghz is missing (which the output says loudly).
- ``runner``: warm-up, rounds, CPU per request, medians.
- ``report`` and ``plots``: targets with PASS/FAIL, ``suite.md``, ``suite.json``,
  and the PNGs in ``loadtests/results/``.
- ``mlserver_model``: the same ``add_sub`` as an MLServer custom runtime; it is
  imported only by MLServer, inside its own virtual environment.

Beside the suite, two tools of their own: ``ghz_check`` runs every ghz command and
config the repository documents (``results/ghz_configs.md``), and ``profile``
samples the gateway with py-spy under ghz load (``make bench-profile``).

Nothing here is imported by the package's tests, and nothing here imports
``mlserver``, except ``mlserver_model``.
"""
