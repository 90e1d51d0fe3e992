"""`python -m bench.streams`: streaming through the gateway, a compressed soak, N processes."""
