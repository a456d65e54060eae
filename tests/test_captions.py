"""Caption lookup for DGS-Net's text branch: absolute, root-relative and cwd-relative keys, and the template."""

from __future__ import annotations

import json
import logging
import os

import pytest

pytest.importorskip("torch")

from dgs_trainer.captions import CaptionError, load_captions  # noqa: E402
from dgs_trainer.data import FAKE, REAL, Sample  # noqa: E402


def test_keys_match_absolute_root_relative_and_cwd_relative(tmp_path, monkeypatch):
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
    captions = load_captions(samples, root, captions_file, template="a {label} image")
    assert captions == ["absolute key", "relative to the data root", "relative to the working folder",
                        "a real image"]


def test_template_only_warns_and_bad_files_fail(tmp_path, caplog):
    samples = [Sample(str(tmp_path / "x.png"), FAKE, "g")]
    with caplog.at_level(logging.WARNING):
        assert load_captions(samples, tmp_path) == ["a fake photo"]
    assert "no caption file given" in caplog.text
    unrelated = tmp_path / "other.json"
    unrelated.write_text(json.dumps({"elsewhere/y.png": "caption"}))
    with pytest.raises(CaptionError, match="none of the 1 images"):
        load_captions(samples, tmp_path, unrelated)
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2]")
    with pytest.raises(CaptionError, match="expected a JSON object"):
        load_captions(samples, tmp_path, broken)


def test_root_reached_through_a_symlink(tmp_path):
    real_root = tmp_path / "real data"
    (real_root / "g" / "0_real").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real_root, target_is_directory=True)
    samples = [Sample(str(link / "g" / "0_real" / "a.png"), REAL, "g")]
    captions_file = tmp_path / "captions.json"
    captions_file.write_text(json.dumps({"g/0_real/a.png": "a caption"}))
    assert load_captions(samples, link, captions_file) == ["a caption"]
