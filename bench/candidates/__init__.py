"""Minimal reverse proxies that ``bench/proxy_bench.py`` measures next to nginx and kubegate.

Each module exposes an ASGI ``app`` meant to run under uvicorn (``--loop uvloop --http httptools``, one
worker, no access log) and forwards every request to the upstream named by ``$BENCH_UPSTREAM``
(``http://127.0.0.1:PORT``), with a keep-alive connection pool to it.
"""
