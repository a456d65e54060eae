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

from dgs_sdk.data import Sample
from dgs_sdk.errors import DgsError
from dgs_sdk.files import AtomicFile, read_regular

__all__ = ["MISSING_CAPTION", "CaptionError", "load_captions", "read_caption_table", "write_caption_table"]

log = logging.getLogger(__name__)

# A caption file holds one short line per image: a million images make about 150 MB. The limit keeps a hostile
# file from taking the machine's memory (a JSON text takes several times its size once parsed).
MAX_CAPTION_FILE_BYTES = 1024**3

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


def read_caption_table(path: str | os.PathLike) -> dict[str, str]:
    """The captions of an existing caption file, in file order.

    Raises:
        CaptionError: the file is not a regular file, cannot be read, or is not a JSON object whose values are
            all strings; the message names it.
    """
    data = read_regular(path, MAX_CAPTION_FILE_BYTES, CaptionError)
    what = "a JSON object mapping image paths to captions"
    try:
        table = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CaptionError(f"{path}: expected {what}; it is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CaptionError(f"{path}: expected {what}; it is not JSON ({e})") from None
    except RecursionError:
        raise CaptionError(f"{path}: expected {what}; it holds JSON nested too deeply to read") from None
    if not isinstance(table, dict):
        raise CaptionError(f"{path}: expected {what}, found a JSON {type(table).__name__}")
    for key, caption in table.items():
        if not isinstance(caption, str):
            raise CaptionError(f"{path}: expected {what}; the caption of {key!r} is not a string ({caption!r:.40})")
    return table


def write_caption_table(path: str | os.PathLike, table: dict[str, str]) -> None:
    """Replace ``path`` atomically with ``table`` as JSON, sorted by path, one entry a line.

    Raises:
        CaptionError: the file cannot be written (the old one, if any, is then left as it was).
    """
    text = json.dumps(table, ensure_ascii=False, indent=0, sort_keys=True) + "\n"
    # File names that are not UTF-8 reach Python as lone surrogates, which UTF-8 cannot encode. Written as
    # backslash escapes they become JSON's own \udcXX escapes, which json.loads turns back into the same name.
    data = text.encode("utf-8", "backslashreplace")
    try:
        with AtomicFile(path) as out:
            out.file.write(data)
    except OSError as e:
        raise CaptionError(f"{path}: cannot write the captions ({e.strerror or e})") from None


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
    for key, caption in read_caption_table(caption_file).items():
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
