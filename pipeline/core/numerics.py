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

MKL honours ``MKL_CBWR`` only on Intel processors: on any other vendor (AMD) it runs its AUTO
branch instead (its developer guide says so), so an AMD EPYC gave other numbers than an Intel Xeon
from the first loss on. There, :func:`configure` first loads ``mkl_isa.c`` (compiled once with
``cc`` into the user's cache), which makes MKL pick its branch by the instruction set, and then
checks the branch MKL actually runs (:func:`mkl_branch`): anything but ``AVX2,STRICT`` stops the
stage in one line rather than train with other kernels. With it, the same train stage on an AMD
EPYC and an Intel Xeon writes the same bytes (docs/reproducibility.md).

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

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.core.cli import PipelineError

REPRODUCIBLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2,STRICT",
    "OMP_DYNAMIC": "FALSE",  # and MKL_DYNAMIC=FALSE, which pipeline/__init__.py sets for every process
}
THREADS_ENV = "OMP_NUM_THREADS"
MKL_BRANCH = REPRODUCIBLE_ENV["MKL_CBWR"]  # the branch MKL must report running (its verbose CNR field)
MKL_ISA_SOURCE = Path(__file__).with_name("mkl_isa.c")


_state = {"reproducible": False}


def configure(reproducible: bool) -> None:
    """The kernels of this process (``train.reproducible``); before torch is imported."""
    if "torch" in sys.modules:
        raise RuntimeError("pipeline.core.numerics.configure must run before torch is imported")
    if reproducible:
        os.environ.update(REPRODUCIBLE_ENV)
        if cpu_vendor() != "GenuineIntel":
            ctypes.CDLL(str(mkl_isa_library()), mode=ctypes.RTLD_GLOBAL)
    import torch

    _state["reproducible"] = bool(reproducible)
    if reproducible:
        torch.backends.nnpack.set_flags(False)
        branch = _state["mkl_branch"] = mkl_branch()
        if branch != MKL_BRANCH:
            raise PipelineError(
                f"train.reproducible: MKL runs its {branch} branch on this {cpu_vendor()} CPU, not {MKL_BRANCH}, "
                f"so the numbers would not repeat elsewhere (set train.reproducible: false for this CPU's own kernels)")
    threads = os.environ.get(THREADS_ENV, "").strip()
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def cpu_vendor() -> str:
    """The processor's vendor string (``GenuineIntel``, ``AuthenticAMD``), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def mkl_isa_library() -> Path:
    """``mkl_isa.c`` built as a shared library, once per version of the file, in the user's cache
    (``$XDG_CACHE_HOME`` or ``~/.cache``, else the temporary folder)."""
    source = MKL_ISA_SOURCE.read_bytes()
    name = f"mkl_isa-{hashlib.sha256(source).hexdigest()[:12]}.so"
    for base in (os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", tempfile.gettempdir()):
        folder = Path(base) / "celeba-vgg16"
        if (folder / name).is_file():
            return folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        partial = folder / f"{name}.{os.getpid()}.tmp"
        cc = os.environ.get("CC", "cc")
        try:
            proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(partial), str(MKL_ISA_SOURCE)],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            raise PipelineError(f"train.reproducible: true on this {cpu_vendor()} CPU builds {MKL_ISA_SOURCE} with a C "
                                f"compiler, and {cc!r} is not installed (install gcc, set CC, or set "
                                f"train.reproducible: false)") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise PipelineError(f"{MKL_ISA_SOURCE}: {cc} failed: {last}")
        os.replace(partial, folder / name)
        return folder / name
    raise PipelineError(f"train.reproducible: no writable cache folder for the library built from {MKL_ISA_SOURCE}")


def mkl_branch() -> str:
    """The conditional-numerical-reproducibility branch MKL runs a matrix product with, as its
    verbose mode reports it (``AVX2,STRICT``, ``AUTO,STRICT``, ...), not as the environment asks."""
    import torch

    a = torch.ones(64, 64)
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as out:
        os.dup2(out.fileno(), 1)  # MKL prints its verbose lines to the C stdout
        try:
            with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
                torch.mm(a, a)
            ctypes.CDLL(None).fflush(None)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    fields = [word[len("CNR:"):] for word in text.split() if word.startswith("CNR:")]
    return fields[-1] if fields else "unknown"


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
            "mkl_cbwr": _state.get("mkl_branch", "native"), "threads": torch.get_num_threads()}
