"""Experiment-tracked VGG-16 transfer learning for CelebA gender classification.

One module per DVC stage (``split``, ``train``, ``select``, ``evaluate``) plus shared
modules (``config``, ``data``, ``synthetic``, ``model``, ``engine``, ``tracking``,
``serving``). Every stage reads ``params.yaml`` through :mod:`pipeline.config`.
"""

import os as _os

# Same numbers on every run of the same machine: MKL may otherwise pick its thread count per
# call (MKL_DYNAMIC), and a different split of a sum rounds differently. A precaution: one
# default run under heavy machine load once gave a 2e-4 different loss for one variant.
_os.environ.setdefault("MKL_DYNAMIC", "FALSE")
