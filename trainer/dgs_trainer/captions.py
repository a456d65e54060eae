"""Captions of training images for DGS-Net's text branch.

DGS-Net's data comes with a JSON file that maps image paths to captions (`dgs caption` writes one). Paths in it
are matched as given, as absolute paths, and relative to the data root, so a caption file written on another
machine still fits. A caption must never carry the label: the surgery projects the image gradient off the
direction in which the text branch's loss grows, which means nothing if the text already says "fake". So an image
without a caption gets the empty caption (no words at all), and a warning says how many.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from dgs_sdk.errors import DgsError
from dgs_sdk.files import read_regular

from .data import Sample

__all__ = ["MISSING_CAPTION", "CaptionError", "load_captions", "read_caption_file"]

log = logging.getLogger(__name__)

MAX_CAPTION_FILE_BYTES = 1024**3  # a caption per image of the largest public training sets is well under this

MISSING_CAPTION = ""  # the caption of an image the file has none for: says nothing, about the label least of all


class CaptionError(ValueError, DgsError):
    """Captions cannot be read, written or made (caption file, captioner or settings); the message says why."""


def _keys(path: str, root: Path) -> list[str]:
    absolute = os.path.abspath(path)
    keys = [path, absolute]
    # Relative to the root as written and as resolved (the root may be reached through a symlink).
    for base, file in ((os.path.abspath(root), absolute), (root.resolve(), Path(absolute).resolve())):
        try:
            keys.append(Path(file).relative_to(base).as_posix())
        except ValueError:
            pass
    return keys


def read_caption_file(caption_file: str | os.PathLike) -> dict[str, str]:
    """The ``{image path: caption}`` object of a caption file, every caption a string.

    Raises:
        CaptionError: the file cannot be read, is not such an object, or is too large to be one.
    """
    data = read_regular(Path(caption_file), MAX_CAPTION_FILE_BYTES, CaptionError)
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deeply, a 5000-digit number
        raise CaptionError(f"{caption_file}: cannot read captions ({e})") from None
    if not isinstance(raw, dict):
        raise CaptionError(f"{caption_file}: expected a JSON object mapping image paths to captions")
    for key, caption in raw.items():
        if not isinstance(caption, str):
            raise CaptionError(f"{caption_file}: the caption of {key!r} is not a string ({caption!r})")
    return raw


def load_captions(samples: Sequence[Sample], root: str | os.PathLike, caption_file: str | os.PathLike) -> list[str]:
    """One caption per sample, in order; `MISSING_CAPTION` for samples the file has none for.

    Args:
        samples: the training samples.
        root: the data root; JSON keys may be relative to it.
        caption_file: JSON object ``{image path: caption}``.

    Raises:
        CaptionError: the file cannot be read, or holds a caption for none of the samples.
    """
    root = Path(root)
    table: dict[str, str] = {}
    for key, caption in read_caption_file(caption_file).items():
        table[Path(key).as_posix()] = caption
        table[os.path.abspath(key)] = caption
    captions, missing = [], []
    for sample in samples:
        caption = next((table[k] for k in _keys(sample.path, root) if k in table), None)
        if caption is None:
            missing.append(sample.path)
            caption = MISSING_CAPTION
        captions.append(caption)
    if len(missing) == len(samples):
        raise CaptionError(f"{caption_file}: none of the {len(samples)} images under {root} has a caption in it "
                           f"(e.g. {samples[0].path}); write one with dgs caption {root} --out {caption_file}")
    if missing:
        log.warning("%s: %d of %d images have no caption (e.g. %s); they are trained with an empty caption "
                    "(running dgs caption %s --out %s again fills them in)", caption_file, len(missing), len(samples),
                    missing[0], root, caption_file)
    return captions
