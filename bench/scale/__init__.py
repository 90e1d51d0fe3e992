"""`python -m bench.scale`: how the gateway behaves with a registry of thousands of workers."""
