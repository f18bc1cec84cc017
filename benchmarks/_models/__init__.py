"""Helpers of the model benchmark and of the demo-checkpoint script.

``data``: generated images at model resolution with per-pixel labels (cached),
patch sampling. ``recipes``: the two-stage and end-to-end training recipes and
the evaluation of attention sampling, A-MIL, the DAFL patch classifier and the
baselines. Both ``benchmarks/models.py`` and ``sample_data/make_demo_checkpoints.py``
use them, so the demo checkpoints are trained exactly as the benchmark reports.
"""
