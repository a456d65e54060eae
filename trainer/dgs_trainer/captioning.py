"""Captions for DGS-Net's text branch, written by an open_clip CoCa captioner.

`caption_images` captions every image of a data root into a JSON object ``{image path: caption}``: the file
`dgs_trainer.captions.load_captions` reads, in the form DGS-Net's own code reads. Keys are the sample paths as
`dgs_sdk.data.load_samples` gives them (``os.path.join(root, generator, "0_real", file)`` for ForenSynths).

The captioner sees pixels only: each image is decoded by `dgs_sdk.image.load_image` and preprocessed like the
CoCa weights expect, and neither its path, its folder names nor its label reach the model. A caption therefore
cannot name the label by construction, which is what keeps the text branch from leaking it.

The file is rewritten atomically as captioning goes on (`dgs_sdk.files.AtomicFile`), so an interruption keeps
what was done; running again with the same output file captions only the images it has no caption for yet.

Decoding is a beam search written here over CoCa's forward pass. open_clip's ``CoCa.generate`` needs the
transformers package, which dgs does not install, and its beam search is built on ``BeamSearchScorer``, which
transformers 5 no longer has.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dgs_sdk.data import load_samples
from dgs_sdk.errors import DgsError
from dgs_sdk.preprocess import PreprocessSpec

from .captions import CaptionError, _keys, read_caption_table, write_caption_table
from .dataset import ImageDataset, ImageUsage, collate_skipping_unreadable
from .methods.base import help_of
from .models import create_clip, list_archs
from .train import resolve_device

__all__ = [
    "CaptionConfig",
    "CaptionSummary",
    "CocaCaptioner",
    "beam_search",
    "caption_images",
]

log = logging.getLogger(__name__)


@dataclass
class CaptionConfig:
    """What `caption_images` captions, with which CoCa model and decoding, into which file (each field's ``help``
    metadata is its `dgs caption` flag's help)."""

    data: str  # a data root (any layout `load_samples` understands) or a CSV manifest
    out: str = field(metadata=help_of(
        "JSON file of captions {image path: caption}; an existing one is continued, its captions kept."))
    split: str | None = field(default=None, metadata=help_of(
        "Only images under a folder of this name in DATA (e.g. train for GenImage)."))
    arch: str = field(default="coca_ViT-L-14", metadata=help_of("open_clip CoCa model name."))
    pretrained: str = field(default="mscoco_finetuned_laion2b_s13b_b90k", metadata=help_of(
        "open_clip pretrained tag of --arch, or a local checkpoint path."))
    batch_size: int = field(default=32, metadata=help_of("Images captioned together."))
    device: str = field(default="auto", metadata=help_of("auto, cpu, cuda or cuda:N."))
    workers: int = field(default=2, metadata=help_of(
        "DataLoader worker processes that decode images (0: decode in this process)."))
    # Beam widths of 3 to 5 are usual for image captioning; each beam costs another pass of the text decoder.
    beams: int = field(default=3, metadata=help_of("Beam width of the caption search (1: greedy)."))
    # open_clip's generate stops at 30 tokens counting its start token, and waits for 5 before an end may come.
    max_tokens: int = field(default=30, metadata=help_of(
        "Most tokens in a caption (a word may take several); a longer one is cut there."))
    min_tokens: int = field(default=4, metadata=help_of("Fewest tokens before a caption may end."))
    length_penalty: float = field(default=1.0, metadata=help_of(
        "A caption's score is its summed token log-probabilities over length ** this exponent (0 favours short "
        "captions, larger values longer ones)."))
    save_every: float = field(default=60.0, metadata=help_of(
        "Seconds between rewrites of --out while captioning (0: after every batch); it is always written at the "
        "end, and when captioning stops early."))

    def __post_init__(self) -> None:
        for name in ("batch_size", "beams", "max_tokens", "min_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CaptionError(f"{name} must be a whole number of at least 1, got {value!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise CaptionError(f"workers must be a whole number of at least 0, got {self.workers!r}")
        if self.min_tokens > self.max_tokens:
            raise CaptionError(f"min_tokens ({self.min_tokens}) is more than max_tokens ({self.max_tokens})")
        if not math.isfinite(self.length_penalty):
            raise CaptionError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if not math.isfinite(self.save_every) or self.save_every < 0:
            raise CaptionError(f"save_every must be a number of seconds of at least 0, got {self.save_every!r}")


@dataclass
class CaptionSummary:
    """What `caption_images` did with ``images`` distinct images: ``captioned`` got a new caption, ``kept`` had one
    in ``out`` already, ``unreadable`` were skipped without a caption (``example``: one of their errors)."""

    out: str
    images: int
    captioned: int
    kept: int
    unreadable: int
    example: str | None = None


def beam_search(
    model: nn.Module,
    images: torch.Tensor,
    start: int,
    end: int,
    beams: int = 3,
    max_tokens: int = 30,
    min_tokens: int = 4,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """The most likely caption of each image under a CoCa model, as token ids without the start and end tokens.

    Each image keeps ``beams`` running captions. One that ends becomes a candidate scored by its summed token
    log-probabilities over ``(tokens + 1) ** length_penalty`` (the end token counts); an image is done once it
    has ``beams`` candidates and none of its running captions scores better at its present length, or when
    captions reach ``max_tokens``. Done images leave the batch, so the decoder works on unfinished ones only.

    Args:
        model: an open_clip CoCa model in eval mode.
        images: preprocessed images ``[B, 3, S, S]`` on the model's device.
        start: the start-of-text token id; it is never generated.
        end: the end-of-text token id.
        beams: beam width (1: greedy decoding).
        max_tokens: longest caption; running captions are cut there.
        min_tokens: the end token is not allowed before this many tokens.
        length_penalty: exponent of the length normalisation.
    """
    count = images.shape[0]
    with torch.inference_mode():
        encoded = model(images)
        latent = encoded["image_features"].repeat_interleave(beams, 0)  # [B*K, E], K beams per image
        embeddings = encoded["image_embs"].repeat_interleave(beams, 0)  # [B*K, T, D]
        # All beams of an image start as the same empty caption: only the first may grow at the first step, or
        # the image would get K copies of one caption.
        scores = [[0.0] + [-math.inf] * (beams - 1) for _ in range(count)]
        sequences: list[list[int]] = [[] for _ in range(count * beams)]
        active = list(range(count))  # images still searching; rows [a*K, (a+1)*K) hold those of active[a]
        ended: list[list[tuple[float, list[int]]]] = [[] for _ in range(count)]  # best first, at most K
        for length in range(max_tokens):
            tokens = torch.tensor([[start, *s] for s in sequences], device=images.device)  # [A*K, 1+length]
            logits = model(None, tokens, image_latent=latent, image_embs=embeddings, output_labels=False)["logits"]
            log_probs = torch.log_softmax(logits[:, -1].float(), dim=-1)  # [A*K, V]
            log_probs[:, start] = -math.inf
            if length < min_tokens:
                log_probs[:, end] = -math.inf
            vocabulary = log_probs.shape[1]
            totals = torch.tensor(scores, device=log_probs.device).view(-1, 1) + log_probs  # [A*K, V]
            # 2K candidates per image leave K that go on even when K of them are end tokens.
            top, flat = totals.view(len(active), beams * vocabulary).topk(2 * beams, dim=1)  # [A, 2K]
            rows, next_sequences, next_scores, still_active = [], [], [], []
            for a, (image, image_top, image_flat) in enumerate(zip(active, top.tolist(), flat.tolist(), strict=True)):
                going: list[tuple[int, int, float]] = []
                for score, index in zip(image_top, image_flat, strict=True):
                    beam, token = divmod(index, vocabulary)
                    row = a * beams + beam
                    if token == end:
                        normalised = score / (length + 1) ** length_penalty
                        ended[image] = sorted([*ended[image], (normalised, sequences[row])], reverse=True)[:beams]
                    else:
                        going.append((row, token, score))
                        if len(going) == beams:
                            break
                best_going = going[0][2] / (length + 1) ** length_penalty
                if len(ended[image]) == beams and ended[image][-1][0] >= best_going:
                    continue
                still_active.append(image)
                for row, token, score in going:
                    rows.append(row)
                    next_sequences.append([*sequences[row], token])
                    next_scores.append(score)
            if not still_active:
                active = []
                break
            index = torch.tensor(rows, device=latent.device)
            latent, embeddings = latent[index], embeddings[index]
            active, sequences = still_active, next_sequences
            scores = [next_scores[i : i + beams] for i in range(0, len(next_scores), beams)]
        # Captions cut at max_tokens compete with those that ended.
        for a, image in enumerate(active):
            for beam in range(beams):
                normalised = scores[a][beam] / max_tokens**length_penalty
                ended[image] = sorted([*ended[image], (normalised, sequences[a * beams + beam])], reverse=True)
    return [candidates[0][1] for candidates in ended]


class CocaCaptioner:
    """An open_clip CoCa model with its tokenizer, preprocessing and decoding settings: images in, captions out."""

    def __init__(self, model: nn.Module, tokenizer: open_clip.SimpleTokenizer, spec: PreprocessSpec,
                 config: CaptionConfig) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.config = config

    @staticmethod
    def check(config: CaptionConfig) -> None:
        """Refuse, without loading anything, an architecture that is unknown or no CoCa captioner, and no weights.

        Raises:
            CaptionError: the message names the architecture and what was expected.
        """
        arch, pretrained = config.arch, config.pretrained
        if arch not in list_archs():
            coca = ", ".join(name for name in list_archs() if "multimodal_cfg" in open_clip.get_model_config(name))
            raise CaptionError(f"architecture {arch!r} is unknown (CoCa captioners: {coca})")
        model_config = open_clip.get_model_config(arch)
        if "multimodal_cfg" not in model_config:
            raise CaptionError(f"architecture {arch!r} is not a CoCa captioner (e.g. coca_ViT-L-14)")
        if model_config["text_cfg"].get("hf_tokenizer_name"):
            raise CaptionError(f"architecture {arch!r} uses a Hugging Face tokenizer; dgs captions with CoCa "
                               "models that use CLIP's tokenizer (e.g. coca_ViT-L-14)")
        if not pretrained or str(pretrained).lower() == "none":
            raise CaptionError("a captioner needs trained weights: give an open_clip pretrained tag of "
                               f"{arch} or a local checkpoint path, not {pretrained!r}")

    @classmethod
    def load(cls, config: CaptionConfig, device: str | torch.device = "cpu") -> CocaCaptioner:
        """Create ``config.arch`` with ``config.pretrained`` weights on ``device``.

        Raises:
            CaptionError: `check` refuses the config; the weights are neither a local file nor a tag of the
                architecture, or cannot be loaded; or the model cannot read ``max_tokens`` tokens.
        """
        cls.check(config)
        arch, pretrained = config.arch, config.pretrained
        try:
            model = create_clip(arch, pretrained, device=str(device))
        except ValueError as e:
            raise CaptionError(str(e)) from None
        if config.max_tokens > model.context_length:
            raise CaptionError(f"max_tokens {config.max_tokens} is more than {arch} can read "
                               f"({model.context_length} tokens)")
        return cls(model, open_clip.get_tokenizer(arch), _preprocess_spec(model, arch), config)

    def caption(self, images: torch.Tensor) -> list[str]:
        """Captions of preprocessed images ``[B, 3, S, S]`` (on the model's device), in order."""
        config = self.config
        token_lists = beam_search(self.model, images, self.tokenizer.sot_token_id, self.tokenizer.eot_token_id,
                                  config.beams, config.max_tokens, config.min_tokens, config.length_penalty)
        # decode() ends every word with a space (CLIP's end-of-word mark): split and join leave single spaces.
        return [" ".join(self.tokenizer.decode(tokens).split()) for tokens in token_lists]


def _preprocess_spec(model: nn.Module, arch: str) -> PreprocessSpec:
    """The SDK's `clip` preprocessing with the size, mean and std the model's weights came with."""
    cfg = model.visual.preprocess_cfg
    size = cfg["size"]
    side = size if isinstance(size, int) else size[0]
    if not isinstance(size, int) and len(set(size)) != 1:
        raise CaptionError(f"{arch} takes {size[0]}x{size[1]} images; dgs preprocesses to squares only")
    if cfg.get("interpolation", "bicubic") != "bicubic" or cfg.get("resize_mode", "shortest") != "shortest":
        raise CaptionError(f"{arch} expects {cfg.get('interpolation')} resizing in {cfg.get('resize_mode')} mode; "
                           "dgs preprocesses with a bicubic resize of the shortest side only")
    try:
        return PreprocessSpec(transform="clip", size=side, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    except ValueError as e:
        raise CaptionError(f"{arch}: its preprocessing cannot be used ({e})") from None


def _check_writable(out: Path) -> None:
    folder = out.parent
    if not folder.is_dir():
        raise CaptionError(f"{out}: cannot write the captions, its folder does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CaptionError(f"{out}: cannot write the captions, its folder is not writable")


def caption_images(config: CaptionConfig, progress: bool = False) -> CaptionSummary:
    """Caption every image of ``config.data`` into ``config.out``, continuing an existing caption file.

    Images that already have a caption in ``config.out`` (matched as `load_captions` matches them: as given,
    absolute, or relative to the data root) are not decoded again, and every caption already in the file, of
    these images or of any other, is kept as it is. Unreadable images get no caption; they are counted, and
    tried again by the next run. Captions are written every ``config.save_every`` seconds and at the end; when
    captioning stops early (an error, Ctrl-C, SIGTERM) the captions of finished batches are written before the
    exception goes on, so running the same command again continues from there.

    Raises:
        CaptionError: ``config.out`` exists but is not a caption file, or cannot be written; the model cannot be
            created (see `CocaCaptioner.load`; a wrong architecture is refused before anything is read); the
            device is not available.
        DataLayoutError: ``config.data`` holds no labelled images.
    """
    out = Path(config.out)
    CocaCaptioner.check(config)
    try:
        device = resolve_device(config.device)
    except ValueError as e:
        raise CaptionError(str(e)) from None
    samples = load_samples(config.data, config.split)
    table = read_caption_table(out) if os.path.lexists(out) else {}
    # Keys spelled as load_captions reads them, so that an image counts as captioned exactly when training
    # would find its caption.
    known = {Path(key).as_posix() for key in table} | {os.path.abspath(key) for key in table}
    todo, kept, seen = [], 0, set()
    for sample in samples:
        if sample.path in seen:  # a manifest may list a file twice
            continue
        seen.add(sample.path)
        if any(key in known for key in _keys(sample.path, Path(config.data))):
            kept += 1
        else:
            todo.append(sample)
    _check_writable(out)
    if not todo:
        log.info("%s: all %d images already have a caption", out, kept)
        return CaptionSummary(str(out), kept, 0, kept, 0)
    if kept:
        log.info("%s: %d images already have a caption; captioning the other %d", out, kept, len(todo))
    captioner = CocaCaptioner.load(config, device)
    loader = DataLoader(
        ImageDataset(todo, captioner.spec),
        batch_size=config.batch_size,
        num_workers=config.workers,
        collate_fn=collate_skipping_unreadable,
        pin_memory=device.type == "cuda",
    )
    usage, captioned, unsaved, last_write = ImageUsage(), 0, 0, time.monotonic()
    bar = tqdm(total=len(todo), unit="image", desc="captioning", disable=not progress)
    try:
        for batch in loader:
            usage.add(batch)
            if "image" in batch:
                try:
                    captions = captioner.caption(batch["image"].to(device))
                except torch.OutOfMemoryError:
                    raise CaptionError(f"out of memory captioning {config.batch_size} images at once with "
                                       f"{config.beams} beams on {device}; lower the batch size") from None
                for index, caption in zip(batch["index"].tolist(), captions, strict=True):
                    table[todo[index].path] = caption
                captioned += len(captions)
                unsaved += len(captions)
            bar.update(len(batch["errors"]) + (len(batch["index"]) if "index" in batch else 0))
            if unsaved and time.monotonic() - last_write >= config.save_every:
                write_caption_table(out, table)
                unsaved, last_write = 0, time.monotonic()
    except BaseException:
        if unsaved:
            try:
                write_caption_table(out, table)
                log.warning("stopped: %d captions are in %s; run again with the same output file to continue",
                            len(table), out)
            except DgsError as e:
                log.error("stopped, and the last %d captions could not be written: %s", unsaved, e)
        raise
    finally:
        bar.close()
    if unsaved or not os.path.lexists(out):  # a run whose images were all unreadable still leaves its file
        write_caption_table(out, table)
    if usage.skipped:
        log.warning("%d of %d images could not be read and have no caption (e.g. %s)", usage.skipped, len(todo),
                    usage.example)
    return CaptionSummary(str(out), len(seen), captioned, kept, usage.skipped, usage.example)
