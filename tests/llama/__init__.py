"""A real llama.cpp `llama-server` for tests: its build, a tiny generated model, fixtures.

`build.py` compiles the server once into the user cache (`make llama-server`);
`make_tiny_gguf.py` writes the model; `server.py` holds the session fixtures `llama_server`
and `llama_server_eos`, registered for every test in tests/conftest.py.
"""
