"""Speed and memory measurements (``python -m benchmarks.<name>``); never run as tests."""
