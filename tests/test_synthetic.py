"""The embedded default data set: deterministic, CelebA layout, known label noise."""
import hashlib

from PIL import Image

from pipeline.data.celeba import read_attributes, read_identities
from pipeline.data.synthetic import ATTRIBUTES, HEIGHT, WIDTH, generate


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate(tmp_path / "a", 30, 0.05, seed=7)
    generate(tmp_path / "b", 30, 0.05, seed=7)
    generate(tmp_path / "c", 30, 0.05, seed=8)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_celeba_layout_readable_by_the_real_reader(tmp_path):
    summary = generate(tmp_path, 40, 0.05, seed=1)
    lines = (tmp_path / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == "40" and lines[1].split() == ATTRIBUTES and len(ATTRIBUTES) == 40
    assert all(set(line.split()[1:]) <= {"-1", "1"} for line in lines[2:])
    frame = read_attributes(tmp_path)
    assert len(frame) == 40 and set(frame["label"]) == {0, 1}
    ids = read_identities(tmp_path)
    assert list(ids["image_id"]) == list(frame["image_id"])
    assert ids["identity"].nunique() == summary["identities"] < 40  # people have several images
    with Image.open(tmp_path / "img_align_celeba" / "000001.jpg") as img:
        assert img.size == (WIDTH, HEIGHT) and img.format == "JPEG"


def test_label_noise_rate(tmp_path):
    summary = generate(tmp_path, 1000, 0.1, seed=0)
    # binomial(1000, 0.1): mean 100, sd 9.5
    assert 70 <= summary["labels_flipped"] <= 130
    assert generate(tmp_path / "clean", 50, 0.0, seed=0)["labels_flipped"] == 0
