"""The split stage checks and hashes every image once (pipeline/data/manifest.py); a later stage trusts
it with one stat per image, hashes only what was modified since, and names a file that changed."""
import os

import pytest
from helpers.config import write_params

from pipeline.core.cli import PipelineError
from pipeline.core.config import load_params
from pipeline.data import manifest, synthetic
from pipeline.data.celeba import IMAGE_DIR
from pipeline.data.dataset import read_split
from pipeline.stages.split import split


@pytest.fixture
def params(tmp_path):
    root = tmp_path / "celeba"
    synthetic.generate(root, 40, 0.0, seed=0)
    (tmp_path / "project").mkdir()
    p = load_params(write_params(tmp_path / "project", {"data.source": "celeba", "data.root": str(root)}))
    split(p)
    return p


def check(params, name="val"):
    said = []
    rows = manifest.verify(params.dataset_root(), read_split(params.path("split.dir"), name),
                           params.path("split.dir"), params.shared_path("train.feature_cache"), said.append)
    return rows, said


def test_the_manifest_lists_every_image_with_its_split_size_and_hash(params):
    table = manifest.load(params.path("split.dir"))
    assert len(table) == 40 and sorted(table["split"].unique()) == ["test", "train", "val"]
    for name in ("train", "val", "test"):
        frame = read_split(params.path("split.dir"), name)
        assert table[table["split"] == name].index.tolist() == frame["image_id"].tolist()
    first = params.dataset_root() / IMAGE_DIR / table.index[0]
    assert table["size"].iloc[0] == first.stat().st_size and len(table["blake2b"].iloc[0]) == 32


def test_unchanged_images_cost_a_stat_and_a_touched_one_a_hash(params):
    rows, said = check(params)
    assert said == [] and len(rows) == 4  # split remembered every file as it saw it
    image = params.dataset_root() / IMAGE_DIR / rows.index[0]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # touched, same bytes
    assert check(params)[1] == ["data: hashing 1 of 4 images again (modified since the split stage saw them)"]
    assert check(params)[1] == []  # and remembered


def test_an_image_that_changed_since_the_split_is_one_line(params):
    rows, _ = check(params)
    path = params.dataset_root() / IMAGE_DIR / rows.index[0]
    good = path.read_bytes()
    same_size = bytearray(good)
    same_size[-10] ^= 0xFF  # other pixels, same size
    for bad, message in ((bytes(same_size), "other bytes than the split stage checked \\(changed since the split "
                                            "stage ran; run dvc repro\\)"),
                         (good[:300], "file is truncated"), (None, "listed in .*val\\.csv but not found")):
        path.unlink()
        if bad is not None:
            path.write_bytes(bad)
        with pytest.raises(PipelineError, match=rf"{rows.index[0]}: {message}"):
            check(params)
        path.unlink(missing_ok=True)
        path.write_bytes(good)
    check(params)  # the same bytes again: fine


def test_the_images_digest_follows_their_content_not_their_names_alone(params):
    table = manifest.load(params.path("split.dir"))
    frames = {name: read_split(params.path("split.dir"), name) for name in ("train", "val")}
    before = manifest.digest(table, frames)
    assert manifest.digest(table, frames) == before
    changed = table.copy()
    changed.iloc[0, changed.columns.get_loc("blake2b")] = "0" * 32
    assert manifest.digest(changed, frames) != before
    assert manifest.digest(table, {"val": frames["val"], "train": frames["train"]}) != before  # order counts


def test_stages_of_two_projects_in_one_process_each_read_their_own_manifest(params, tmp_path):
    """The rows of a manifest are found through a table kept per process; another project's
    manifest, loaded in its place (the test suite, a notebook), must not be read through them."""
    root = tmp_path / "other"
    synthetic.generate(root, 60, 0.0, seed=1)
    (tmp_path / "second").mkdir()
    other = load_params(write_params(tmp_path / "second", {"data.source": "celeba", "data.root": str(root)}))
    split(other)
    frames = {p: {"train": read_split(p.path("split.dir"), "train")} for p in (params, other)}
    for _ in range(500):  # a freed table's address soon serves another table (about 100 rounds here)
        for p in (params, other):
            table = manifest.load(p.path("split.dir"))
            assert manifest.digest(table, frames[p]) == manifest.digest(table.copy(), frames[p])
            del table


def test_a_split_without_a_manifest_is_a_clear_error(params):
    (params.path("split.dir") / manifest.MANIFEST).unlink()
    with pytest.raises(PipelineError, match=r"manifest.csv: not found \(run the split stage again\)"):
        check(params)


def signals_of_a_worker(paths):
    """Stands in for images._inspect_all in a pool worker: its SIGTERM and SIGINT handlers."""
    import signal

    default_term = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ignores_int = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    return [(None, int(default_term), int(ignores_int), "")] * len(paths)


def raise_on_sigterm(signum, frame):
    raise RuntimeError("SIGTERM")  # a Python handler, as pipeline.core.cli.run_main installs one


def test_the_hashing_pool_dies_on_sigterm_and_leaves_ctrl_c_to_the_stage(params, monkeypatch):
    """split hashes the images in a fork pool, from a process whose SIGTERM handler
    (pipeline.core.cli) raises an exception: a worker that inherited it ran Python clean-up when
    Pool.terminate sent SIGTERM, and once hung there, so split never ended. Its workers take the
    default SIGTERM (they die) and ignore Ctrl-C (the stage terminates the pool)."""
    import signal

    from pipeline.data import images

    ids = read_split(params.path("split.dir"), "train")["image_id"].tolist()
    monkeypatch.setattr(images, "PARALLEL_FROM", 2)  # the pool, as for 2,000 images and more
    monkeypatch.setattr(images, "_inspect_all", signals_of_a_worker)
    before = signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        table = images.scan(params.dataset_root(), ids, workers=2)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert set(table["size"]) == {1} and set(table["mtime_ns"]) == {1}  # every chunk's worker


class SignalsOfALoaderWorker:
    """A dataset whose items are its DataLoader worker's [SIGTERM is default, SIGINT is ignored]."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        import torch

        return torch.tensor(signals_of_a_worker([None])[0][1:3])


def test_the_decode_workers_die_on_sigterm_and_leave_ctrl_c_to_the_stage():
    """The decode pass's DataLoader workers are forked from the stage too: the same signals."""
    import signal

    from pipeline.data.dataset import make_loader

    before = signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        batch = next(iter(make_loader(SignalsOfALoaderWorker(), 2, 1, shuffle=False)))
    finally:
        signal.signal(signal.SIGTERM, before)
    assert batch.tolist() == [[1, 1], [1, 1]]
