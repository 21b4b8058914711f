"""Benchmarks: scripts that print our figures next to a named peer's. Run them from the repository root as modules,
``python3 -m benchmarks.<name> [options]`` (``benchmarks.inference``, ``benchmarks.training``, ...); what they share
is in ``benchmarks._common``."""
