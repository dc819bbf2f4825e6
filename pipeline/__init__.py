"""Experiment-tracked VGG-16 transfer learning for CelebA gender classification.

One module per DVC stage (``split``, ``train``, ``select``, ``evaluate``) plus shared
modules (``config``, ``data``, ``synthetic``, ``model``, ``engine``, ``tracking``,
``serving``). Every stage reads ``params.yaml`` through :mod:`pipeline.config`.
"""
