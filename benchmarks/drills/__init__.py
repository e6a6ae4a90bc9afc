"""Fault drills on a multi-host deployment: `python -m benchmarks.drills --help`."""
