"""Caption lookup for DGS-Net's text branch: absolute, root-relative and cwd-relative keys; images without a
caption get the empty one, never the label."""

from __future__ import annotations

import json
import logging
import os

import pytest

pytest.importorskip("torch")

from dgs_sdk.data import FAKE, REAL, Sample  # noqa: E402
from dgs_trainer.captions import MISSING_CAPTION, CaptionError, load_captions  # noqa: E402


def test_keys_match_absolute_root_relative_and_cwd_relative(tmp_path, monkeypatch, caplog):
    root = tmp_path / "data"
    samples = [
        Sample(str(root / "gen" / "0_real" / "a.png"), REAL, "gen"),
        Sample(str(root / "gen" / "1_fake" / "b.png"), FAKE, "gen"),
        Sample(str(root / "gen" / "1_fake" / "c.png"), FAKE, "gen"),
        Sample(str(root / "gen" / "0_real" / "d.png"), REAL, "gen"),
    ]
    monkeypatch.chdir(tmp_path)
    table = {
        str(root / "gen" / "0_real" / "a.png"): "absolute key",
        "gen/1_fake/b.png": "relative to the data root",
        os.path.join("data", "gen", "1_fake", "c.png"): "relative to the working folder",
    }
    captions_file = tmp_path / "captions.json"
    captions_file.write_text(json.dumps(table))
    with caplog.at_level(logging.WARNING):
        captions = load_captions(samples, root, captions_file)
    assert captions == ["absolute key", "relative to the data root", "relative to the working folder",
                        MISSING_CAPTION]
    assert MISSING_CAPTION == "" and "1 of 4 images have no caption (e.g. " in caplog.text


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "expected a JSON object mapping image paths to captions, found a JSON list"),
    ('{"a.png": 3}', "the caption of 'a.png' is not a string"),
    ("{", "it is not JSON"),
    ("[" * 100_000, "nested too deeply"),
    (b"\xff\xfe", "it is not UTF-8 text"),
])
def test_bad_caption_files_fail_with_their_name(tmp_path, text, message):
    samples = [Sample(str(tmp_path / "x.png"), FAKE, "g")]
    broken = tmp_path / "broken.json"
    broken.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CaptionError, match=message) as raised:
        load_captions(samples, tmp_path, broken)
    assert str(broken) in str(raised.value)


def test_a_file_captioning_none_of_the_images_fails(tmp_path):
    samples = [Sample(str(tmp_path / "x.png"), FAKE, "g")]
    unrelated = tmp_path / "other.json"
    unrelated.write_text(json.dumps({"elsewhere/y.png": "caption"}))
    with pytest.raises(CaptionError, match="none of the 1 images .* write one with dgs caption"):
        load_captions(samples, tmp_path, unrelated)


def test_root_reached_through_a_symlink(tmp_path):
    real_root = tmp_path / "real data"
    (real_root / "g" / "0_real").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real_root, target_is_directory=True)
    samples = [Sample(str(link / "g" / "0_real" / "a.png"), REAL, "g")]
    captions_file = tmp_path / "captions.json"
    captions_file.write_text(json.dumps({"g/0_real/a.png": "a caption"}))
    assert load_captions(samples, link, captions_file) == ["a caption"]
