"""The configuration of a training run, declared once: the run's own settings and, nested in ``options``, the
settings of its method (each method's options dataclass lives in its module, `dgs_trainer.methods`).

The same structure is read from a ``--config`` YAML or JSON file, saved in the run's config.json, and turned into
`dgs train`'s flags by `dgs_trainer.flags`: a nested field ``options.lora.rank`` is the flag ``--lora-rank``. Every
value is checked against its declared type and bounds, and an error names the key and the file it came from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgs_sdk.errors import DgsError
from dgs_sdk.perturb import Degradation
from dgs_sdk.preprocess import MAX_INPUT_SIZE, MIN_INPUT_SIZE, PreprocessSpec

from .errors import ConfigError, TrainError
from .methods import METHODS
from .methods.base import Stage, help_of

__all__ = [
    "CONFIG_FORMAT",
    "METHODS",
    "ConfigError",
    "TrainConfig",
    "TrainError",
    "config_to_dict",
    "legacy_config",
    "option_leaves",
    "parse_text_value",
    "read_config_file",
    "shown",
    "type_alternatives",
]

# config.json's ``format``: 2 nests the method's settings in ``options``; runs without it hold the flat settings
# of earlier versions, read by `legacy_config`.
CONFIG_FORMAT = 2
PREPROCESS = ("patch-select", "clip")
SMALL_IMAGES = ("pad", "resize")
MAX_CONFIG_FILE_BYTES = 1024**2
# Values quoted in messages: YAML aliases can make a 1 kB file hold a structure too large to ever print.
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict, _QUOTE.maxstring, _QUOTE.maxother, _QUOTE.maxlong = 3, 4, 4, 60, 60, 40


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut short."""
    return _QUOTE.repr(value)


@dataclass
class TrainConfig:
    """Everything a training run depends on.

    ``options`` holds the method's own settings (`DGSConfig`, `MiraGeConfig`, ...), None meaning its published
    defaults. ``preprocess`` and ``small_images`` left as None take the method's defaults, and ``quick_gelu``
    left as None follows the pretrained weights (see `dgs_trainer.models.trained_with_quick_gelu`); all three are
    resolved when the config is made, so a saved run records what it used.
    """

    data: str = field(metadata=help_of("Training data root (folder layouts: ForenSynths, GenImage, real/fake) or a "
                                       "CSV manifest."))
    out: str = field(metadata=help_of("Run folder to create."))
    method: str = field(default="dgs", metadata=help_of("Training method (see the list above)."))
    arch: str = field(default="ViT-L-14", metadata=help_of("open_clip model name, e.g. ViT-L-14, ViT-B-16, or "
                                                            "dgs-tiny-vit."))
    pretrained: str = field(default="openai", metadata=help_of(
        "open_clip pretrained tag (openai), a local checkpoint path, or none."))
    image_size: int | None = field(default=None, metadata=help_of(
        "Side of the model input, when it differs from the architecture's (a distilled student takes its teacher's) "
        "[default: the architecture's]."))
    quick_gelu: bool | None = field(default=None, metadata=help_of(
        "Build the QuickGELU variant of the architecture [default: when the pretrained weights were trained with "
        "it, as OpenAI's were]."))
    val: str | None = field(default=None, metadata=help_of("Validation data root, scored after every epoch."))
    split: str | None = field(default=None, metadata=help_of(
        "Only images under a folder of this name in --data (e.g. train for GenImage)."))
    val_split: str | None = field(default=None, metadata=help_of(
        "Only images under a folder of this name in --val (e.g. val for GenImage)."))
    batch_size: int = field(default=32, metadata=help_of("Images per batch."))
    accumulate: int = field(default=1, metadata=help_of("Batches whose gradients are summed per optimizer step."))
    preprocess: str | None = field(default=None, metadata=help_of(
        "Model input: patch-select (DGS-Net's mosaic) or clip (resize and centre crop) [default: the method's].",
        choices=PREPROCESS))
    small_images: str | None = field(default=None, metadata=help_of(
        "patch-select on images with fewer patches than the mosaic: pad (the official transform: patches repeat, "
        "black tiles fill the rest) or resize (shorter side to the input size first) [default: the method's].",
        choices=SMALL_IMAGES))
    hflip: bool = field(default=True, metadata=help_of("Random horizontal flips at train time."))
    blur_prob: float = field(default=0.0, metadata=help_of(
        "Probability of a Gaussian blur on each training image, before preprocessing (as DGS-Net's code offers; off "
        "by default there too)."))
    blur_sigma: tuple[float, ...] = field(default=(0.5,), metadata=help_of(
        "Blur sigma in pixels: one value, or min,max drawn uniformly."))
    jpeg_prob: float = field(default=0.0, metadata=help_of(
        "Probability of a JPEG re-compression of each training image, after the blur and before preprocessing."))
    jpeg_quality: tuple[int, ...] = field(default=(75,), metadata=help_of(
        "JPEG quality 1-100: one value, or min,max drawn uniformly."))
    device: str = field(default="auto", metadata=help_of("auto, cpu, cuda or cuda:N."))
    workers: int = field(default=2, metadata=help_of("DataLoader worker processes that decode images."))
    seed: int = field(default=0, metadata=help_of("Seed of data order, augmentation and initialisation."))
    save_every: int = field(default=0, metadata=help_of(
        "Also checkpoint every N optimizer steps (0: at the end of each epoch only)."))
    tensorboard: bool = field(default=False, metadata=help_of("Also write a TensorBoard log (needs tensorboard)."))
    options: Any = field(default=None, metadata=help_of("The method's settings."))

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r} is unknown (expected one of {', '.join(METHODS)})")
        method = METHODS[self.method]
        if self.options is None:
            self.options = method.options_type()
        elif not isinstance(self.options, method.options_type):
            raise ConfigError(f"options of method {self.method} must be a {method.options_type.__name__}, got "
                              f"{type(self.options).__name__}")
        for name in ("batch_size", "accumulate"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("workers", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} cannot be negative, got {getattr(self, name)}")
        if self.image_size is not None and not MIN_INPUT_SIZE <= self.image_size <= MAX_INPUT_SIZE:
            raise ConfigError(f"image_size must be from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}, got {self.image_size}")
        try:
            self.degradation()
        except DgsError as e:
            raise ConfigError(str(e)) from None
        if self.preprocess is None:
            self.preprocess = method.preprocess
        if self.preprocess not in PREPROCESS:
            raise ConfigError(f"preprocess {self.preprocess!r} is unknown (expected patch-select or clip)")
        if self.small_images is None:
            self.small_images = method.small_images if self.preprocess == "patch-select" else "resize"
        if self.small_images not in SMALL_IMAGES:
            raise ConfigError(f"small_images {self.small_images!r} is unknown (expected pad or resize)")
        if self.small_images == "pad" and self.preprocess != "patch-select":
            raise ConfigError("small_images pad applies to patch-select preprocessing only (clip resizes every image)")
        patch = PreprocessSpec.patch_select().patch_size
        if self.image_size is not None and self.preprocess == "patch-select" and self.image_size % patch:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch-select's {patch}-pixel patches")
        if self.quick_gelu is None:
            from .models import trained_with_quick_gelu

            self.quick_gelu = trained_with_quick_gelu(self.arch, self.pretrained)

    def degradation(self) -> Degradation:
        """The random blur and JPEG re-compression of training images (`dgs_sdk.perturb.Degradation`)."""
        return Degradation(self.blur_prob, tuple(self.blur_sigma), self.jpeg_prob, tuple(self.jpeg_quality))

    def method_runner(self):
        """The `Method` this run trains, holding its options."""
        return METHODS[self.method](self.options)

    def stages(self) -> list[Stage]:
        return self.method_runner().stages()

    def preprocess_spec(self, image_size: int) -> PreprocessSpec:
        if self.preprocess == "patch-select":
            return PreprocessSpec.patch_select(size=image_size, small_images=self.small_images)
        return PreprocessSpec.clip(size=image_size)

    def to_dict(self) -> dict[str, Any]:
        """The nested structure config.json and ``--config`` files hold."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: Any, source: str | os.PathLike = "config", out: str | None = None) -> TrainConfig:
        """A config from the nested structure `to_dict` writes, every key known and of its declared type.

        Args:
            values: the mapping (from JSON or YAML).
            source: the file it came from, for messages.
            out: replaces the saved ``out`` (a run folder may have moved since it was written).

        Raises:
            ConfigError: an unknown or missing key, a value of the wrong type or out of bounds; the message names
                ``source`` and the key.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: expected a mapping of settings, found {type(values).__name__}")
        values = dict(values)
        if out is not None:
            values["out"] = out
        options = values.pop("options", None)
        options = _build(_method_of(values, source).options_type, {} if options is None else options, source,
                         "options.")
        return _build(cls, values, source, "", given={"options": options})


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON/YAML values: nested dataclasses as mappings, tuples as lists."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def type_alternatives(hint: Any) -> tuple[Any, ...]:
    """The alternatives of an annotation: ``int | None`` -> (int, NoneType)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def parse_text_value(value: Any, hint: Any, name: str) -> Any:
    """A setting written as text (a flag, or a run written before ``format`` 2) as the config value: a list setting
    is comma-separated (``q,k,v``), and ``all`` stands for None where the setting may be None (every block).

    Raises:
        ConfigError: a list item of the wrong type; the message names ``name``.
    """
    kinds = type_alternatives(hint)
    tuple_kind = next((k for k in kinds if typing.get_origin(k) is tuple), None)
    if tuple_kind is None or not isinstance(value, str):
        return value
    if type(None) in kinds and value.strip().lower() == "all":
        return None
    item = typing.get_args(tuple_kind)[0]
    parts = [p.strip() for p in value.split(",") if p.strip()]
    try:
        return [item(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated {'integers' if item is int else 'names'}"
                          + (" or 'all'" if type(None) in kinds else "") + f", got {value!r}") from None


def _describe(kind: Any) -> str:
    if kind is type(None):
        return "null"
    if typing.get_origin(kind) is tuple:
        return f"a list of {_describe(typing.get_args(kind)[0])}"
    if dataclasses.is_dataclass(kind):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


def _convert(value: Any, kind: Any, source: str | os.PathLike, key: str) -> tuple[bool, Any]:
    """``(fits, value)``: whether a JSON/YAML value has the declared type, and the value as the dataclass holds it.

    bool is not a number here, an integer is a float, and a list is a tuple's spelling.
    """
    if kind is type(None):
        return value is None, None
    if dataclasses.is_dataclass(kind):
        return isinstance(value, Mapping), (_build(kind, value, source, key + ".") if isinstance(value, Mapping)
                                            else None)
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        if not isinstance(value, (list, tuple)):
            return False, None
        items = [_convert(v, item, source, key) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if kind in (int, float):
        numbers = (int,) if kind is int else (int, float)
        if not isinstance(value, numbers) or isinstance(value, bool):
            return False, None
        if isinstance(value, int) and abs(value) >= 2**63:
            raise ConfigError(f"{source}: {key} is out of range ({str(value)[:24]}...)")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{source}: {key} must be finite, got {value}")
        return True, float(value) if kind is float else value
    return isinstance(value, kind), value


def _method_of(values: Mapping[str, Any], source: str | os.PathLike) -> type:
    """The registered method a config mapping names (``dgs`` when it names none)."""
    method = values.get("method", "dgs")
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"{source}: method {shown(method)} is unknown (expected one of {', '.join(METHODS)})")
    return METHODS[method]


def _build(cls: type, values: Any, source: str | os.PathLike, prefix: str, given: Mapping[str, Any] | None = None
           ) -> Any:
    """``cls`` from a JSON/YAML mapping, every key known and of its declared type; ``given`` are arguments already
    built (not read from ``values``)."""
    given = dict(given or {})
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the config'} must be a mapping, got {shown(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in given}
    unknown = sorted(set(values) - set(fields), key=str)  # YAML keys need not be strings
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix}{str(unknown[0])[:60]} (known: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    arguments = given
    for name, value in values.items():
        key = prefix + name
        kinds = type_alternatives(hints[name])
        for kind in kinds:
            ok, converted = _convert(value, kind, source, key)
            if ok:
                arguments[name] = converted
                break
        else:
            expected = " or ".join(_describe(kind) for kind in kinds)
            raise ConfigError(f"{source}: {key} must be {expected}, got {shown(value)}")
    missing = [name for name, f in fields.items() if name not in arguments and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: {prefix}{missing[0]} is missing")
    try:
        return cls(**arguments)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except ValueError as e:  # the dataclass's own bounds
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {e}") from None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a ``--config`` file: YAML (or JSON) with `TrainConfig`'s structure, or a run's config.json,
    whose ``config`` object is taken.

    Raises:
        ConfigError: the file cannot be read or is not such a mapping.
    """
    import yaml

    from dgs_sdk.files import read_regular

    try:
        text = read_regular(Path(path), MAX_CONFIG_FILE_BYTES, ConfigError).decode("utf-8")
        values = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        raise ConfigError(f"{path}: not valid YAML or JSON ({str(e).splitlines()[0] if str(e) else e})") from None
    if isinstance(values, Mapping) and isinstance(values.get("config"), Mapping) and "format" in values:
        values = values["config"]  # a run's config.json
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: expected a mapping of settings (data: ..., method: ..., options: ...)")
    return dict(values)


# Runs written before config.json had a ``format`` kept every setting flat; where each one lives now.
_LEGACY_KEYS = {
    "epochs": ("epochs",), "lr": ("lr",), "beta1": ("beta1",), "beta2": ("beta2",), "probe_epochs": ("probe_epochs",),
    "lora_rank": ("lora", "rank"), "lora_alpha": ("lora", "alpha"), "lora_dropout": ("lora", "dropout"),
    "lora_targets": ("lora", "targets"), "lora_blocks": ("lora", "blocks"), "help_weight": ("help_weight",),
    "prompt_tokens": ("prompt", "tokens"), "prompt_depth": ("prompt", "depth"), "prompt_context": ("prompt", "context"),
    "dis_weight": ("dis_weight",), "memory_size": ("memory_size",), "temperature": ("temperature",),
    "momentum": ("momentum",), "weight_decay": ("weight_decay",), "warmup_epochs": ("warmup_epochs",),
    "warmup_lr": ("warmup_lr",), "captions": ("captions",),
}
_LEGACY_DROPPED = ("caption_template",)  # only shaped captions at train time; a legacy run cannot be resumed


def legacy_config(values: Any, source: str | os.PathLike, out: str | None = None) -> TrainConfig:
    """The config of a run written before ``format`` 2, with the behaviour it was trained with: LoRA scaled by
    alpha/r, GELU (not QuickGELU) whatever the weights, and small images resized (the preprocessing spec saved with
    the run says so too).

    Raises:
        ConfigError: as `TrainConfig.from_dict`, naming the flat key.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, found {type(values).__name__}")
    option_hints = {key: hint for key, hint, *_ in option_leaves(_method_of(values, source).options_type)}
    run: dict[str, Any] = {"quick_gelu": False, "small_images": "resize"}
    options: dict[str, Any] = {}
    for name, value in values.items():
        if name in _LEGACY_DROPPED:
            continue
        if name not in _LEGACY_KEYS:
            run[name] = value
            continue
        key = _LEGACY_KEYS[name]
        if key not in option_hints or value is None:  # another method's setting, or "the method's default"
            continue
        try:
            value = parse_text_value(value, option_hints[key], f"config key {name!r}")  # "q,k,v", "all"
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        node = options
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value
    if ("lora", "scaling") in option_hints:
        options.setdefault("lora", {})["scaling"] = "linear"
    run["options"] = options
    return TrainConfig.from_dict(run, source, out)


def option_leaves(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, dataclasses.Field,
                                                                          Any]]:
    """``(key, annotation, field, default)`` of every setting of an options dataclass, nested ones flattened
    (``("lora", "rank")``)."""
    hints = typing.get_type_hints(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from option_leaves(hints[f.name], (*prefix, f.name))
        else:
            yield (*prefix, f.name), hints[f.name], f, getattr(instance, f.name)
