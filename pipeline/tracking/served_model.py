"""The MLflow pyfunc model that the registry holds and serves.

One class, two kinds of artifact:

* ``checkpoint`` -- what each training run logs: a trainable-only checkpoint (kilobytes for
  ``head_only``); ``load_context`` rebuilds VGG-16 from the checkpoint's ``model.weights`` (seeded
  init for ``none``, the torch cache for ``imagenet``, a local state dict for a path) and applies it.
* ``network`` -- what ``select`` registers as the champion: the whole fine-tuned network, frozen
  base included (:func:`save_network`), so loading it needs neither ``model.weights`` nor a torch
  cache. Stored in ``select.champion_dtype`` (float16 halves the size; it runs in float32).
  Below 224x224 VGG's ``AdaptiveAvgPool2d((7, 7))`` is folded into fc6 (exact algebra, see
  :class:`pipeline.training.model.FoldedFC6`): 25,088 -> 512*(S/32)^2 inputs, 12x fewer at 64x64.

Input (signature: one binary column ``image``): per row an encoded image (JPEG, PNG or any
format Pillow reads; base64 in JSON through ``mlflow models serve``), a ``uint8`` ``H x W x 3``
array, or an already preprocessed float ``3 x S x S`` tensor. Raw images go through the
evaluation transforms inside the model (:class:`pipeline.data.dataset.Preset`: resize to the training
size, ImageNet mean/std). Called directly (``unwrap_python_model().predict``), it also takes a
``uint8 (N, H, W, 3)`` or float ``(N, 3, S, S)`` array. Output, per image: ``label`` (1 = male,
0 = female: the label of the data, decided at P(male) > 0.5) and ``p_male``, so
``mlflow.models.evaluate(..., model_type="classifier", predictions="label")`` runs on it. An input
that is not an image, or smaller than 32x32 pixels, fails the whole call with an
``MlflowException`` (``INVALID_PARAMETER_VALUE``: a 400 from ``mlflow models serve``) whose
message names the row and the reason in one line.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from pipeline.core.schema import CHAMPION_DTYPES, MIN_IMAGE_SIZE

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # a logged model carries the whole package (code_paths)
MODEL_CODE = Path(__file__).resolve().with_name("mlflow_model.py")  # the model, defined from code
CHECKPOINT_KEYS = ("trainable", "image_size", "weights", "seed")  # what a pipeline checkpoint holds
INPUT_COLUMN = "image"
OUTPUT_COLUMNS = ("label", "p_male")
BASE64 = re.compile(rb"[A-Za-z0-9+/=\r\n]+")
NETWORK_FORMAT = 1
NETWORK_KEYS = ("format", "image_size", "folded", "state")  # what a saved whole network holds
DTYPES = {name: getattr(torch, name) for name in CHAMPION_DTYPES}  # select.champion_dtype
MODEL_REQUIREMENTS = ("torch", "torchvision", "mlflow", "numpy", "pandas", "pyyaml", "scikit-learn")


def model_requirements(root: Path) -> list[str]:
    """The pins of ``root``'s requirements.txt that a logged model needs to load and predict."""
    req = root / "requirements.txt"
    lines = req.read_text().splitlines() if req.is_file() else []
    return [ln.strip() for ln in lines if ln.split("==")[0].strip().lower() in MODEL_REQUIREMENTS]


def predict_files(model, paths, batch_size: int) -> np.ndarray:
    """P(male) of image files through a loaded pyfunc ``model``'s own interface, ``batch_size`` at
    a time: each file's bytes in, as ``mlflow models serve`` gets them."""
    paths = list(paths)
    chunks = [model.predict(pd.DataFrame({INPUT_COLUMN: [Path(p).read_bytes() for p in paths[i:i + batch_size]]}))
              ["p_male"].to_numpy(dtype=np.float32) for i in range(0, len(paths), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def score_split(params, uri: str, frame: pd.DataFrame, verify: bool = True) -> np.ndarray:
    """P(male) of a split's images (``frame["image_id"]``) under the registered version ``uri``
    (``models:/<name>/<version>``), through its pyfunc interface on the files' bytes, as users get
    it, on ``train.device``; ``verify``: first check the images against the split's manifest. A
    version that cannot be loaded is a one-line error naming it. What select and evaluate score by."""
    from pipeline.core.cli import PipelineError, one_line
    from pipeline.data import manifest
    from pipeline.data.celeba import detect_layout
    from pipeline.training.device import resolve_device

    root = params.dataset_root()
    if verify:
        manifest.verify(root, frame, params.path("split.dir"), params.shared_path("train.feature_cache"))
    try:
        model = mlflow.pyfunc.load_model(uri)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise PipelineError(f"{uri} cannot be loaded: {one_line(exc)}") from None
    model.unwrap_python_model().net.to(resolve_device(params.get("train.device")))
    folder = detect_layout(root).image_dir
    return predict_files(model, [folder / image_id for image_id in frame["image_id"]], params.get("train.batch_size"))


def signature():
    """Input: a binary column ``image``; output per row: ``label`` (1 = male) and ``p_male``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    label, p_male = OUTPUT_COLUMNS
    return ModelSignature(inputs=Schema([ColSpec(DataType.binary, INPUT_COLUMN)]),
                          outputs=Schema([ColSpec(DataType.long, label), ColSpec(DataType.float, p_male)]))


def log(name: str, artifacts: dict, image_size: int, root: Path) -> str:
    """Log the model (:data:`MODEL_CODE`, defined from code, carrying the whole package) to the
    active run as ``name`` with ``artifacts`` (a checkpoint or a whole network); its URI."""
    info = mlflow.pyfunc.log_model(
        name=name, python_model=str(MODEL_CODE), artifacts={k: str(v) for k, v in artifacts.items()},
        code_paths=[str(PACKAGE_DIR)], signature=signature(), input_example=example_input(image_size),
        pip_requirements=model_requirements(root))
    return info.model_uri


def example_input(image_size: int):
    """A one-row input example: a plain grey PNG of the training size (no data set image)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (image_size, image_size), (128, 128, 128)).save(buf, format="PNG")
    return pd.DataFrame({INPUT_COLUMN: [buf.getvalue()]})


# --- the whole network, self-contained ------------------------------------------------

def save_network(path, net: torch.nn.Module, image_size: int, dtype: str = "float16") -> None:
    """Write the whole network (eval mode) as a state dict that :func:`load_network` rebuilds
    without ``model.weights``; the adaptive avgpool is folded into fc6 below 224x224."""
    from pipeline.training.model import FoldedFC6

    s = image_size // 32
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    folded = s < 7
    if folded:
        fold = FoldedFC6(net.avgpool, net.classifier[0], s)
        state["classifier.0.weight"], state["classifier.0.bias"] = fold.weight.cpu(), fold.bias.cpu()
    state = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"format": NETWORK_FORMAT, "image_size": int(image_size), "folded": folded, "dtype": dtype,
                "state": state}, path)


def load_network(path) -> tuple[torch.nn.Module, int]:
    """``(network in float32 and eval mode, image size)`` of a :func:`save_network` file; it
    builds VGG-16's skeleton on the meta device, so nothing is initialised or downloaded."""
    from torch import nn
    from torchvision.models import vgg16

    from pipeline.core.cli import PipelineError

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"{path}: cannot read the network ({type(exc).__name__})") from None
    missing = [k for k in NETWORK_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing or payload["format"] != NETWORK_FORMAT:
        raise PipelineError(f"{path}: not a network saved by this pipeline "
                            f"({'no ' + repr(missing[0]) if missing else 'format ' + str(payload['format'])})")
    size = int(payload["image_size"])
    with torch.device("meta"):
        net = vgg16(weights=None)
        net.classifier[6] = nn.Linear(4096, 1)
        if payload["folded"]:
            s = size // 32
            net.avgpool = nn.Identity()
            net.classifier[0] = nn.Linear(512 * s * s, 4096)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state"].items()}
    try:
        net.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise PipelineError(f"{path}: the network does not fit VGG-16 at {size}x{size} ({exc})") from None
    return net.eval(), size


# --- the pyfunc model ---------------------------------------------------------------

def large_enough(img):
    """``img`` itself, or :class:`ValueError` when it is too small to hold a face to classify."""
    w, h = img.size
    if min(w, h) < MIN_IMAGE_SIZE:
        raise ValueError(f"a {w}x{h} image is smaller than the model's minimum of {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} "
                         "pixels")
    return img


def labelled(p_male: np.ndarray) -> pd.DataFrame:
    """The model's output: ``label`` (1 = male at P(male) > the threshold) and ``p_male``."""
    from pipeline.data.dataset import THRESHOLD

    p_male = np.asarray(p_male, dtype=np.float32)
    return pd.DataFrame(dict(zip(OUTPUT_COLUMNS, ((p_male > THRESHOLD).astype(np.int64), p_male))))


class GenderClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        if "network" in context.artifacts:
            self.net, self.image_size = load_network(context.artifacts["network"])
        else:
            self.load_checkpoint(context.artifacts["checkpoint"])

    def load_checkpoint(self, path) -> "GenderClassifier":
        """Rebuild the network from a trainable-only checkpoint (``models/<variant>/best.pt``,
        ``checkpoints/epoch_NNN.pt``); ``torch.load`` runs with ``weights_only=True``."""
        from pipeline.core.cli import PipelineError
        from pipeline.training.model import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path)
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise PipelineError(f"{path}: not a checkpoint of this pipeline (no '{missing[0]}' in it; "
                                "expected models/<variant>/best.pt or an MLflow model folder)")
        self.image_size = int(ckpt["image_size"])
        self.net = model_from_checkpoint(ckpt, ckpt["weights"], int(ckpt["seed"]))
        return self

    @classmethod
    def from_checkpoint(cls, path) -> "GenderClassifier":
        """The classifier of a checkpoint file, without MLflow (what ``load_context`` builds)."""
        return cls().load_checkpoint(path)

    def preprocess(self, value) -> torch.Tensor:
        """One input as the network's ``(3, S, S)`` float tensor; :class:`ValueError` saying why not."""
        from PIL import Image, UnidentifiedImageError

        from pipeline.data.dataset import Preset
        from pipeline.data.images import decode_problem

        preset = Preset(int(self.image_size))
        if isinstance(value, str):
            value = value.encode("ascii", errors="replace")
        if isinstance(value, (bytes, bytearray, memoryview)) and BASE64.fullmatch(bytes(value[:64])):
            # base64 text that nothing decoded: MLflow 3.17's server decodes the binary column of
            # {"dataframe_split": ...} but passes {"inputs": {"image": [...]}} on as text. No
            # image format starts with 64 base64 characters (JPEG: FF D8, PNG: 89 'PNG').
            try:
                value = base64.b64decode(bytes(value), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("a text value is not base64 of an image") from None
        if isinstance(value, (bytes, bytearray, memoryview)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # e.g. a corrupt EXIF block: harmless here
                    with Image.open(io.BytesIO(bytes(value))) as img:
                        return preset(large_enough(img))
            except ValueError:
                raise
            except UnidentifiedImageError:
                raise ValueError("not an image file Pillow can read") from None
            except Exception as exc:  # noqa: BLE001 - Pillow raises many types on damaged data
                raise ValueError(decode_problem(exc)) from None
        if isinstance(value, Image.Image):
            return preset(large_enough(value))
        array = value.numpy() if isinstance(value, torch.Tensor) else value
        if isinstance(array, np.ndarray):
            if array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
                return preset(large_enough(Image.fromarray(array)))  # raw pixels, H x W (x 3)
            size = int(self.image_size)
            if array.dtype.kind == "f" and array.shape == (3, size, size):
                return torch.as_tensor(np.asarray(array, dtype=np.float32))  # already preprocessed
            raise ValueError(f"an array of dtype {array.dtype} and shape {array.shape} is neither a uint8 "
                             f"H x W x 3 image nor a preprocessed float 3 x {size} x {size} tensor")
        raise ValueError(f"a {type(value).__name__} is not an image (expected encoded image bytes, "
                         "a uint8 H x W x 3 array or a float 3 x S x S tensor)")

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """P(male) per preprocessed image, on the CPU; ``self.net.to(device)`` moves the work."""
        device = next(self.net.parameters()).device
        return torch.sigmoid(self.net(x.to(device, non_blocking=True)).squeeze(1)).cpu()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            column = INPUT_COLUMN if INPUT_COLUMN in model_input.columns else model_input.columns[0]
            values = list(model_input[column])
        elif isinstance(model_input, np.ndarray) and model_input.ndim == 4:
            values = list(model_input)  # (N, H, W, 3) uint8 or (N, 3, S, S) float
        elif isinstance(model_input, np.ndarray) and model_input.ndim == 3 and model_input.dtype == np.uint8:
            values = [model_input]  # one H x W x 3 image
        else:
            values = list(model_input)
        tensors = []
        for i, value in enumerate(values):
            try:
                tensors.append(self.preprocess(value))
            except ValueError as exc:  # the caller's to fix: a 400 with this line, not a server error
                from mlflow.exceptions import MlflowException
                from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

                raise MlflowException(f"input row {i}: {exc}", error_code=INVALID_PARAMETER_VALUE) from None
        p_male = self.predict_proba(torch.stack(tensors)).numpy() if tensors else np.zeros(0, dtype=np.float32)
        return labelled(p_male)
