"""Measurement: timing and out-of-memory as a result (timing), memory probes and the analytic model (memory), the
memory/speed sweeps against a transformer (profiler), and reading them back (report)."""
