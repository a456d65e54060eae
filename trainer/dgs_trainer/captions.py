"""Captions of training images for DGS-Net's text branch.

DGS-Net's data comes with a JSON file that maps image paths to captions. Paths in it are matched as given,
as absolute paths, and relative to the data root, so a caption file written on another machine still fits.
Images without a caption get ``template`` filled with the label name, and a warning says how many.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from dgs_sdk.errors import DgsError

from .data import REAL, Sample

__all__ = ["DEFAULT_CAPTION_TEMPLATE", "CaptionError", "load_captions"]

log = logging.getLogger(__name__)

DEFAULT_CAPTION_TEMPLATE = "a {label} photo"


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


def load_captions(
    samples: Sequence[Sample],
    root: str | os.PathLike,
    caption_file: str | os.PathLike | None = None,
    template: str = DEFAULT_CAPTION_TEMPLATE,
) -> list[str]:
    """One caption per sample, in order.

    Args:
        samples: the training samples.
        root: the data root; JSON keys may be relative to it.
        caption_file: JSON object ``{image path: caption}``; None uses ``template`` for every image.
        template: fallback caption; ``{label}`` becomes ``real`` or ``fake``.
    """
    root = Path(root)
    table: dict[str, str] = {}
    if caption_file is not None:
        try:
            raw = json.loads(Path(caption_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CaptionError(f"{caption_file}: cannot read captions ({e})") from None
        if not isinstance(raw, dict):
            raise CaptionError(f"{caption_file}: expected a JSON object mapping image paths to captions")
        for key, caption in raw.items():
            normalised = Path(key).as_posix()
            table[normalised] = str(caption)
            table[os.path.abspath(key)] = str(caption)
    captions, missing = [], 0
    for sample in samples:
        caption = next((table[k] for k in _keys(sample.path, root) if k in table), None)
        if caption is None:
            missing += 1
            caption = template.format(label="real" if sample.label == REAL else "fake")
        captions.append(caption)
    if caption_file is None:
        log.warning("no caption file given: every image is captioned from the template %r", template)
    elif missing == len(samples):
        raise CaptionError(f"{caption_file}: none of the {len(samples)} images under {root} has a caption in it")
    elif missing:
        log.warning("%s: %d of %d images have no caption; the template %r is used", caption_file, missing,
                    len(samples), template)
    return captions
