"""Experiment-tracked VGG-16 transfer learning for CelebA gender classification.

Packages by concern, importing one way (docs/design.md): ``core`` (params, errors, files, kernels,
stage deps), ``data``, ``training`` and ``evaluation``, ``tracking`` (MLflow), ``stages`` (one
module per DVC stage), ``tools``; ``python -m pipeline <stage|tool>`` runs them.
"""

import os as _os

# Same numbers on every run of the same machine: MKL may otherwise pick its thread count per
# call (MKL_DYNAMIC), and a different split of a sum rounds differently. A precaution: one
# default run under heavy machine load once gave a 2e-4 different loss for one variant.
_os.environ.setdefault("MKL_DYNAMIC", "FALSE")
