"""``python -m bench.paper``: DiffusionBERT's four claims tested at small scale on the CPU.

See docs/paper.md. Modules: ``presets`` (sizes and variants), ``runs`` (cached training and
evaluation jobs), ``report`` (tables, verdicts, plot), ``__main__`` (the command).
"""
