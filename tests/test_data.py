"""The CelebA-layout reader and the image transforms."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import PipelineError
from pipeline.data import FaceDataset, epoch_flips, read_attributes, read_identities
from pipeline.synthetic import ATTRIBUTES


def write_celeba(root: Path, males: list[int], header=ATTRIBUTES, size=(178, 218)):
    """A tiny CelebA folder: one image per entry of ``males`` (1 male, 0 female)."""
    (root / "img_align_celeba").mkdir(parents=True)
    rows = []
    male_col = list(header).index("Male") if "Male" in header else None
    for i, male in enumerate(males, start=1):
        image_id = f"{i:06d}.jpg"
        Image.new("RGB", size, (200 * male, 40, 90)).save(root / "img_align_celeba" / image_id)
        values = ["-1"] * len(header)
        if male_col is not None:
            values[male_col] = "1" if male else "-1"
        rows.append(f"{image_id} " + " ".join(values))
    (root / "list_attr_celeba.txt").write_text(f"{len(males)}\n{' '.join(header)}\n" + "\n".join(rows) + "\n")
    (root / "identity_CelebA.txt").write_text("".join(f"{i:06d}.jpg {i % 3}\n" for i in range(1, len(males) + 1)))
    return root


def test_reader_maps_male_to_0_1(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0, 0, 1, 1])
    frame = read_attributes(root)
    assert list(frame["image_id"]) == [f"{i:06d}.jpg" for i in range(1, 6)]
    assert list(frame["label"]) == [1, 0, 0, 1, 1]
    assert read_identities(root)["identity"].tolist() == [1, 2, 0, 1, 2]


def test_reader_rejects_missing_male_column(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0], header=[a for a in ATTRIBUTES if a != "Male"])
    with pytest.raises(PipelineError, match="no 'Male' column"):
        read_attributes(root)


def test_reader_rejects_label_outside_minus_one_one(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0, 1])
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    fields = lines[3].split()
    fields[1 + ATTRIBUTES.index("Male")] = "0"
    lines[3] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError, match=r"000002\.jpg has Male=0"):
        read_attributes(root)


def test_reader_rejects_duplicate_id(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0])
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[2]]) + "\n")
    with pytest.raises(PipelineError, match=r"000001\.jpg is listed more than once"):
        read_attributes(root)


@pytest.mark.parametrize("content", [None, "", "0\n"])
def test_reader_missing_or_empty_file(tmp_path, content):
    root = tmp_path / "c"
    root.mkdir()
    if content is not None:
        (root / "list_attr_celeba.txt").write_text(content)
    with pytest.raises(PipelineError, match="list_attr_celeba.txt"):
        read_attributes(root)


def test_dataset_resizes_normalises_and_flips_by_epoch(tmp_path):
    root = tmp_path / "c"
    (root / "img_align_celeba").mkdir(parents=True)
    img = np.zeros((218, 178, 3), dtype=np.uint8)
    img[:, :89] = 255  # left half white
    Image.fromarray(img).save(root / "img_align_celeba" / "000001.jpg", quality=100)
    import pandas as pd

    frame = pd.DataFrame({"image_id": ["000001.jpg"] * 64, "label": [1] * 64})
    ds = FaceDataset(root, frame, 32, train=True, seed=3)
    ds.set_epoch(1)
    flips = epoch_flips(64, 3, 1)
    assert flips.any() and not flips.all()
    assert torch.equal(ds.flips, flips)
    x0, y0 = ds[int(torch.nonzero(~flips)[0])]
    x1, _ = ds[int(torch.nonzero(flips)[0])]
    assert x0.shape == (3, 32, 32) and y0.item() == 1.0
    assert x0[:, :, 2].mean() > x0[:, :, -3].mean()  # left bright, unflipped
    assert torch.allclose(x1, torch.flip(x0, dims=[2]), atol=1e-5)
    # white normalises to (1 - mean) / std
    assert x0[0, 5, 2].item() == pytest.approx((1 - 0.485) / 0.229, abs=0.05)
    # evaluation never flips, and flips of a new epoch differ
    assert not FaceDataset(root, frame, 32).flips.any()
    assert not torch.equal(epoch_flips(64, 3, 2), flips)
