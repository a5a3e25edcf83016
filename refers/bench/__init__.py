"""``refers bench``: what a training run costs and where the time goes.

One module per measurement: :mod:`~refers.bench.steps` (training-step throughput, model FLOPs,
MFU, framework overhead against a bare loop), :mod:`~refers.bench.loader` (data-loading paths),
:mod:`~refers.bench.evaluation` (scoring and AUC time), :mod:`~refers.bench.index_memory` (the
pre-training study index). :mod:`~refers.bench.report` writes ``benchmarks/results.json`` and
``RESULTS.md``. Heavy imports happen inside the functions.
"""
