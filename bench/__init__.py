"""imgpipe's benchmarks: `python -m bench --help`."""
