"""Stage ``generate``: the embedded default data set, synthetic faces in CelebA's own on-disk layout.

Usage::

    python -m pipeline generate [--params params.yaml]

writes ``data.synthetic.images`` faces (seed ``base.seed``) to ``data.synthetic.dir``, the
default ``data.root`` that the split stage reads. Its own output path, never the CelebA folder
that ``data.root`` names with ``data.source: celeba`` (``pipeline.core.config.validate`` refuses an
overlap), so DVC never replaces real data.

Deterministic from the seed, so the default pipeline runs offline with nothing downloaded.
Each synthetic person has a true gender that decides coarse cues:

* male: short hair (a cap on top of the head, nothing beside the face) and a beard
  (a dark jaw) or, for some, a moustache and stubble; a thin, dark mouth;
* female: long hair framing the face down to the shoulders and red lipstick.

Nuisance varies freely: background colour, skin tone, hair colour (black, brown, blond,
grey), face size and position, eyeglasses, brightness, pixel noise. A person has 1-3
images (``identity_CelebA.txt``). The ``Male`` attribute written to ``list_attr_celeba.txt``
is the true gender flipped with probability ``label_noise`` (annotation noise), so the
best reachable accuracy against the file's labels is ``1 - label_noise`` (95 % by default).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.core.config import Params
from pipeline.data.celeba import ATTR_FILE, IDENTITY_FILE, IMAGE_DIR

WIDTH, HEIGHT = 178, 218  # CelebA's aligned crops
ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin "
    "Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache "
    "Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns "
    "Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()
HAIR = {"Black_Hair": (25, 20, 18), "Brown_Hair": (95, 60, 35), "Blond_Hair": (215, 185, 120),
        "Gray_Hair": (150, 150, 150)}


def _person(rng: np.random.Generator) -> dict:
    hair_name = rng.choice(list(HAIR))
    tone = rng.uniform(0.45, 1.0)
    return {
        "male": bool(rng.random() < 0.45),
        "skin": tuple(int(c * tone) for c in (240, 200, 170)),
        "hair_name": str(hair_name),
        "hair": HAIR[hair_name],
        "beard": bool(rng.random() < 0.7),  # else moustache + stubble
        "face_w": rng.uniform(52, 64),
        "face_h": rng.uniform(68, 80),
    }


def _jitter(color, rng, amount=18):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def render(person: dict, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """One image of a person, and the visible attributes it shows."""
    bg = tuple(int(c) for c in rng.integers(0, 256, 3))
    img = Image.new("RGB", (WIDTH, HEIGHT), bg)
    d = ImageDraw.Draw(img)
    cx = WIDTH / 2 + rng.uniform(-8, 8)
    cy = HEIGHT * 0.52 + rng.uniform(-8, 8)
    s = rng.uniform(0.92, 1.08)
    fw, fh = person["face_w"] * s, person["face_h"] * s
    hair = _jitter(person["hair"], rng)
    skin = _jitter(person["skin"], rng, 10)
    male = person["male"]
    if not male:  # long hair behind the head, down to the shoulders
        d.rounded_rectangle([cx - fw - 22, cy - fh - 14, cx + fw + 22, HEIGHT + 10], radius=40, fill=hair)
    d.rectangle([cx - fw * 0.45, cy + fh * 0.8, cx + fw * 0.45, HEIGHT], fill=skin)  # neck
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    if male:  # short hair: a cap on top of the head
        d.chord([cx - fw - 3, cy - fh - 8, cx + fw + 3, cy + fh * 0.2], 180, 360, fill=hair)
    else:  # fringe
        d.chord([cx - fw, cy - fh - 6, cx + fw, cy - fh * 0.2], 180, 360, fill=hair)
    eye_y = cy - fh * 0.12
    for ex in (cx - fw * 0.4, cx + fw * 0.4):
        d.ellipse([ex - 6, eye_y - 4, ex + 6, eye_y + 4], fill=(245, 245, 245))
        d.ellipse([ex - 3, eye_y - 3, ex + 3, eye_y + 3], fill=(40, 30, 20))
    glasses = bool(rng.random() < 0.15)
    if glasses:
        for ex in (cx - fw * 0.4, cx + fw * 0.4):
            d.ellipse([ex - 12, eye_y - 10, ex + 12, eye_y + 10], outline=(20, 20, 20), width=3)
        d.line([cx - fw * 0.4 + 12, eye_y, cx + fw * 0.4 - 12, eye_y], fill=(20, 20, 20), width=3)
    mouth_y = cy + fh * 0.5
    smiling = bool(rng.random() < 0.5)
    beard = male and person["beard"]
    moustache = male and not person["beard"]
    if beard:  # dark jaw from ear to ear
        dark = tuple(int(c * 0.55) for c in hair) if person["hair_name"] != "Blond_Hair" else (120, 90, 60)
        d.chord([cx - fw, cy - fh * 0.1, cx + fw, cy + fh], 0, 180, fill=dark)
    if moustache:
        stubble = tuple(int(c * 0.8) for c in skin)
        d.chord([cx - fw * 0.9, cy, cx + fw * 0.9, cy + fh], 0, 180, fill=stubble)
        d.rectangle([cx - fw * 0.35, mouth_y - 12, cx + fw * 0.35, mouth_y - 5], fill=(60, 45, 35))
    if male:
        d.line([cx - fw * 0.3, mouth_y, cx + fw * 0.3, mouth_y], fill=(90, 50, 45), width=3)
    else:
        lip = _jitter((200, 30, 60), rng, 25)
        box = [cx - fw * 0.32, mouth_y - 6, cx + fw * 0.32, mouth_y + 8]
        d.chord(box, 0, 180, fill=lip) if smiling else d.ellipse(box, fill=lip)
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.8, 1.2)
    arr += rng.normal(0, 6, arr.shape)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    visible = {person["hair_name"]: True, "Eyeglasses": glasses, "Mustache": moustache,
               "No_Beard": not beard, "Wearing_Lipstick": not male, "Smiling": smiling}
    return out, visible


def generate(out_dir: Path, n_images: int, label_noise: float, seed: int) -> dict:
    """Write ``n_images`` synthetic faces in CelebA layout to ``out_dir``; return a summary."""
    out_dir = Path(out_dir)
    (out_dir / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    attr_rows, id_rows = [], []
    flipped = 0
    identity = 0
    while len(attr_rows) < n_images:
        identity += 1
        person = _person(rng)
        for _ in range(int(rng.integers(1, 4))):
            if len(attr_rows) == n_images:
                break
            image_id = f"{len(attr_rows) + 1:06d}.jpg"
            img, visible = render(person, rng)
            img.save(out_dir / IMAGE_DIR / image_id, quality=90)
            noisy = rng.random() < label_noise
            flipped += noisy
            attrs = {a: bool(visible.get(a, False)) for a in ATTRIBUTES}
            attrs["Male"] = person["male"] != noisy
            attr_rows.append(f"{image_id} " + " ".join("1" if attrs[a] else "-1" for a in ATTRIBUTES))
            id_rows.append(f"{image_id} {identity}")
    (out_dir / ATTR_FILE).write_text(f"{n_images}\n{' '.join(ATTRIBUTES)}\n" + "\n".join(attr_rows) + "\n")
    (out_dir / IDENTITY_FILE).write_text("\n".join(id_rows) + "\n")
    return {"images": n_images, "identities": identity, "label_noise": label_noise, "labels_flipped": int(flipped)}


def generate_from_params(params: Params) -> dict:
    """The set that ``params`` describe, generated next to ``data.synthetic.dir`` and then swapped
    in, so a failure leaves the previous set (which the previous split lists point at) as it was."""
    target = params.path("data.synthetic.dir")
    fresh = target.with_name(f".{target.name}.new")
    shutil.rmtree(fresh, ignore_errors=True)
    try:
        summary = generate(fresh, int(params.get("data.synthetic.images")),
                           float(params.get("data.synthetic.label_noise")), int(params.get("base.seed")))
        shutil.rmtree(target, ignore_errors=True)
        fresh.rename(target)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return summary

