"""Device telemetry: providers (NVML, Triton metrics, CPU, simulated) and the monitor.

Kept import-free on purpose: ``python3 -m scheduler.telemetry.nvml`` must run on a GPU
host that has only numpy, pynvml and the standard library, so importing this package
must not pull in the rest of the scheduler or any third-party client.
"""
