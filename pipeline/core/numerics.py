"""How the stages compute on the CPU: the same numbers on every x86-64 machine, or its fastest kernels.

PyTorch, oneDNN and MKL each pick their kernels by the processor's instruction set, and some of
them split a sum differently over another number of threads; a chaotic first epoch turns the
last bit into points of validation accuracy. With ``train.reproducible: true`` (the default)
every stage that runs the network (train, select, evaluate) computes, on the CPU, with:

* ATen's own kernels (elementwise, pooling, reductions, Adam) at AVX2 (``ATEN_CPU_CAPABILITY``);
* oneDNN's convolutions at AVX2 (``ONEDNN_MAX_CPU_ISA``) for the forward pass, which reduces
  over the input channels in a fixed order whatever the threads; their gradients as ATen's
  im2col and matrix products instead (:func:`backward`): oneDNN splits the weight gradient's sum
  over the batch by thread count (seen here at 32x32), NNPACK blocks by the caches (it is off);
* every matrix product in MKL's strict conditional numerical reproducibility on its AVX2 branch
  (``MKL_CBWR=AVX2,STRICT``): bitwise the same results on any processor with AVX2, whatever the
  number of threads.

``tests/test_reproducible.py`` runs a training stage under another instruction set and 1, 2 and 8
threads and compares metrics and weights byte for byte. The cost is speed (``make bench`` prints
both settings); ``false`` lets each library choose its fastest kernels, and the numbers may then
differ between machines by more than the last digits. Nothing changes on a CUDA device, whose
kernels are its own. ``OMP_NUM_THREADS``, when set, is the intra-op thread count of such a stage
(this torch otherwise caps it at the number of cores).

``python -m pipeline`` calls :func:`configure` between the params check and the stage's imports:
the environment variables must be set before torch loads, which reads them once.
"""
from __future__ import annotations

import os
import sys

REPRODUCIBLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2,STRICT",
    "OMP_DYNAMIC": "FALSE",  # and MKL_DYNAMIC=FALSE, which pipeline/__init__.py sets for every process
}
THREADS_ENV = "OMP_NUM_THREADS"


_state = {"reproducible": False}


def configure(reproducible: bool) -> None:
    """The kernels of this process (``train.reproducible``); before torch is imported."""
    if "torch" in sys.modules:
        raise RuntimeError("pipeline.core.numerics.configure must run before torch is imported")
    if reproducible:
        os.environ.update(REPRODUCIBLE_ENV)
    import torch

    _state["reproducible"] = bool(reproducible)
    if reproducible:
        torch.backends.nnpack.set_flags(False)
    threads = os.environ.get(THREADS_ENV, "").strip()
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def backward(loss) -> None:
    """``loss.backward()``; when :func:`configure` asked for reproducible kernels, with the
    convolutions' gradients computed by ATen (im2col and MKL), not oneDNN."""
    if not _state["reproducible"]:
        loss.backward()
        return
    import torch

    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        loss.backward()
    finally:
        torch.backends.mkldnn.enabled = was


def describe() -> dict:
    """What this process computes with, for MLflow and the cache keys."""
    import torch

    return {"capability": torch.backends.cpu.get_cpu_capability(), "reproducible": _state["reproducible"],
            "mkl_cbwr": os.environ.get("MKL_CBWR", "native"), "threads": torch.get_num_threads()}
