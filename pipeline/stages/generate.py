"""The ``generate`` stage: the embedded synthetic set (:mod:`pipeline.data.synthetic`) into
``data.synthetic.dir``, in CelebA's layout.

    python -m pipeline generate [--params params.yaml]
"""
from __future__ import annotations

import argparse

from pipeline.core.config import load_params
from pipeline.data.synthetic import generate_from_params


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    summary = generate_from_params(params)
    print(f"generate: {summary['images']} images of {summary['identities']} people, "
          f"{summary['labels_flipped']} labels flipped, in {params.path('data.synthetic.dir')}")
