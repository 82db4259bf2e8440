"""petclf's benchmarks; each runs from the repository root as a module, and BENCHMARKS.md keeps what they measured.

    .venv/bin/python -m benchmarks.bench_predict --skip-servers
    .venv/bin/python -m benchmarks.bench_cold_start

Helpers shared by more than one bench (photos, servers, load, timing) live in `benchmarks.common`.
"""
