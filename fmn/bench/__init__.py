"""Benchmarks: `python -m fmn bench quality | speed`."""
