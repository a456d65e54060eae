"""Discovering labelled images in researchers' folder layouts, and the torch dataset that feeds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import write_image
from dgs_sdk import PreprocessSpec, preprocess
from dgs_sdk.image import load_image

torch = pytest.importorskip("torch")

from dgs_sdk.data import FAKE, REAL, DataLayoutError, discover_samples, read_manifest  # noqa: E402
from dgs_trainer.dataset import ImageDataset, collate_skipping_unreadable  # noqa: E402


def small(photos, name: str, k: int) -> np.ndarray:
    """A distinct 96x128 crop of a sample photo."""
    return np.ascontiguousarray(photos[name][k * 8 : k * 8 + 96, k * 8 : k * 8 + 128])


def relative(samples, root: Path) -> set[tuple[str, int, str]]:
    return {(Path(s.path).relative_to(root).as_posix(), s.label, s.generator) for s in samples}


def test_forensynths_layout_with_and_without_class_folders(tmp_path, photos):
    root = tmp_path / "ForenSynths train"
    write_image(root / "progan" / "airplane" / "0_real" / "a.png", small(photos, "coffee", 0))
    write_image(root / "progan" / "airplane" / "1_fake" / "b.JPG", small(photos, "coffee", 1))
    write_image(root / "progan" / "cat" / "1_fake" / "c.jpeg", small(photos, "chelsea", 0))
    write_image(root / "stylegan" / "0_real" / "d.webp", small(photos, "rocket", 0))
    write_image(root / "stylegan" / "1_fake" / "e.Png", small(photos, "rocket", 1))
    (root / "stylegan" / "1_fake" / "notes.txt").write_text("not an image")
    assert relative(discover_samples(root), root) == {
        ("progan/airplane/0_real/a.png", REAL, "progan"),
        ("progan/airplane/1_fake/b.JPG", FAKE, "progan"),
        ("progan/cat/1_fake/c.jpeg", FAKE, "progan"),
        ("stylegan/0_real/d.webp", REAL, "stylegan"),
        ("stylegan/1_fake/e.Png", FAKE, "stylegan"),
    }


def test_genimage_layout_with_spaces_and_splits(tmp_path, photos):
    root = tmp_path / "GenImage"
    sd = root / "Stable Diffusion V1.4"
    write_image(sd / "train" / "nature" / "n1.png", small(photos, "coffee", 0))
    write_image(sd / "train" / "ai" / "a1.png", small(photos, "coffee", 1))
    write_image(sd / "val" / "nature" / "n2.png", small(photos, "coffee", 2))
    write_image(sd / "val" / "ai" / "a2.png", small(photos, "coffee", 3))
    write_image(root / "Midjourney" / "val" / "ai" / "m.png", small(photos, "rocket", 0))
    train = discover_samples(root, split="train")
    val = discover_samples(root, split="val")
    assert relative(train, root) == {
        ("Stable Diffusion V1.4/train/nature/n1.png", REAL, "Stable Diffusion V1.4"),
        ("Stable Diffusion V1.4/train/ai/a1.png", FAKE, "Stable Diffusion V1.4"),
    }
    assert {s.generator for s in val} == {"Stable Diffusion V1.4", "Midjourney"} and len(val) == 3
    assert {s.split for s in train} == {"train"} and len(discover_samples(root)) == 5


def test_flat_layout_and_synonyms(tmp_path, photos):
    root = tmp_path / "mydata"
    write_image(root / "Real" / "x.png", small(photos, "coffee", 0))
    write_image(root / "generated" / "y.png", small(photos, "coffee", 1))
    write_image(root / "synthetic" / "deep" / "z.png", small(photos, "coffee", 2))
    assert relative(discover_samples(root), root) == {
        ("Real/x.png", REAL, "mydata"),
        ("generated/y.png", FAKE, "mydata"),
        ("synthetic/deep/z.png", FAKE, "mydata"),
    }


def test_csv_manifest(tmp_path, photos):
    write_image(tmp_path / "imgs" / "one.png", small(photos, "coffee", 0))
    write_image(tmp_path / "two.png", small(photos, "coffee", 1))
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"path,label,generator\nimgs/one.png,real,\n{tmp_path / 'two.png'},1,sdxl\n")
    samples = discover_samples(manifest)
    assert [(Path(s.path), s.label, s.generator) for s in samples] == [
        (tmp_path / "imgs" / "one.png", REAL, "list"),
        (tmp_path / "two.png", FAKE, "sdxl"),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.png,maybe\n")
    with pytest.raises(DataLayoutError, match=r"bad.csv:2: label 'maybe'"):
        read_manifest(bad)
    (tmp_path / "cols.csv").write_text("file,class\na.png,0\n")
    with pytest.raises(DataLayoutError, match="needs columns path and label"):
        read_manifest(tmp_path / "cols.csv")


def test_unrecognised_layout_says_what_was_found_and_expected(tmp_path, photos):
    root = tmp_path / "holiday"
    write_image(root / "beach" / "a.png", small(photos, "coffee", 0))
    write_image(root / "b.png", small(photos, "coffee", 1))
    with pytest.raises(DataLayoutError) as info:
        discover_samples(root)
    message = str(info.value)
    assert str(root) in message and "beach/" in message and "b.png" in message
    assert "2 images outside any label folder" in message and "0_real/1_fake" in message
    with pytest.raises(DataLayoutError, match="data root not found"):
        discover_samples(tmp_path / "missing")


def test_dataset_uses_the_sdk_preprocessing_and_skips_unreadable_files(tmp_path, photos):
    root = tmp_path / "data"
    good = [write_image(root / "0_real" / f"{i}.png", small(photos, "astronaut", i)) for i in range(3)]
    (root / "1_fake").mkdir()
    (root / "1_fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    samples = discover_samples(root)
    spec = PreprocessSpec.patch_select()
    dataset = ImageDataset(samples, spec, train=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, num_workers=2, collate_fn=collate_skipping_unreadable
    )
    (batch,) = list(loader)
    assert batch["skipped"] == 1 and batch["image"].shape == (3, 3, 224, 224)
    for row, index in enumerate(batch["index"].tolist()):
        expected = preprocess(load_image(samples[index].path), spec)
        np.testing.assert_array_equal(batch["image"][row].numpy(), expected)
    assert sorted(Path(samples[i].path) for i in batch["index"].tolist()) == sorted(good)


def test_training_augmentation_is_seeded_per_epoch(tmp_path, photos):
    path = write_image(tmp_path / "0_real" / "a.png", photos["astronaut"])
    samples = discover_samples(tmp_path)
    spec = PreprocessSpec.patch_select()
    a, b = ImageDataset(samples, spec, train=True, seed=3), ImageDataset(samples, spec, train=True, seed=3)
    epochs_a, epochs_b = [], []
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        epochs_a.append(a[0]["image"])
        epochs_b.append(b[0]["image"])
    for x, y in zip(epochs_a, epochs_b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert any(not torch.equal(epochs_a[0], x) for x in epochs_a[1:])
    # Shuffling and flipping move patches but keep the same pixels.
    fixed = preprocess(load_image(path), spec)
    np.testing.assert_allclose(np.sort(epochs_a[1].numpy(), axis=None), np.sort(fixed, axis=None))
