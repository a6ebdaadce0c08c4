"""unsc_fast's benchmark suite (not part of the installed package; run from a checkout).

- ``python -m benchmarks.run --device cpu|cuda [--quick] --out DIR``: the whole suite.
- ``pytest benchmarks/ --benchmark-only``: small pytest-benchmark versions of the op timings.
- ``python -m benchmarks.tune --device cpu|cuda``: writes unsc_fast/tuned.json.
- ``bash benchmarks/gpu.sh``: build, test and benchmark on a GPU machine in one call.

See benchmarks/README.md for the method.
"""
