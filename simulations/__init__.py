"""Benchmark and comparison scripts that run fedgraft end to end."""
