"""Benchmarks of dbert-kernels: kernels against the reference path, DiffusionBERT against GPT-2.

Run ``python -m bench --device cpu`` (or ``cuda``) from the repository root; see docs/bench.md.
Modules: :mod:`bench.timing` (median timers, CUDA events, rotating inputs), :mod:`bench.configs`
(the sizes per device and mode), :mod:`bench.kernels`, :mod:`bench.e2e`, :mod:`bench.quality`
(steps versus quality with a trained model), :mod:`bench.report` (JSON, markdown, PNG).
"""
