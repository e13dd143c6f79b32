"""Benchmarks: each prints a table and writes JSON, against a baseline measured in the same run."""
