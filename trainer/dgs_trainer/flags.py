"""`dgs train`'s flags, generated from the config dataclasses: one per key (``options.lora.rank`` is
``--lora-rank``), given on the command line as overrides of a ``--config`` file."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import TrainConfig, option_leaves, parse_text_value, read_config_file, shown
from .errors import ConfigError
from .methods import METHODS

__all__ = ["OptionFlag", "config_from_flags", "option_flags", "parse_flag_value"]


@dataclass(frozen=True)
class OptionFlag:
    """One `dgs train` flag: the config key it sets and the methods that have it."""

    flag: str  # --lora-rank
    key: tuple[str, ...]  # ("options", "lora", "rank")
    kind: Any  # the annotation
    help: str
    methods: tuple[str, ...]  # empty for the run's own settings
    defaults: tuple[tuple[str, Any], ...]  # (method, default) for options; ("", default) for the run's own
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def option_flags() -> list[OptionFlag]:
    """Every `dgs train` flag: the run's own settings, then each method's options (a key two methods share, such
    as ``lora.rank``, is one flag)."""
    flags = []
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name != "options":
            default = None if f.default is dataclasses.MISSING else f.default
            flags.append(OptionFlag("--" + f.name.replace("_", "-"), (f.name,), hints[f.name], f.metadata["help"], (),
                                    (("", default),), f.metadata.get("choices")))
    by_key: dict[tuple[str, ...], dict[str, Any]] = {}
    for name, method in METHODS.items():
        for key, kind, f, default in option_leaves(method.options_type, ()):
            entry = by_key.setdefault(key, {"kind": kind, "help": f.metadata.get("help", ""), "defaults": [],
                                            "choices": f.metadata.get("choices")})
            if entry["kind"] != kind:
                raise TypeError(f"option {'.'.join(key)} has type {kind} in {name}, {entry['kind']} elsewhere")
            entry["defaults"].append((name, default))
    for key, entry in by_key.items():
        methods = tuple(m for m, _ in entry["defaults"])
        flags.append(OptionFlag("--" + "-".join(key).replace("_", "-"), ("options", *key), entry["kind"],
                                entry["help"], methods, tuple(entry["defaults"]), entry["choices"]))
    return flags


def parse_flag_value(flag: OptionFlag, value: Any) -> Any:
    """A flag's command-line text as the config value (see `parse_text_value`)."""
    return parse_text_value(value, flag.kind, flag.flag)


def config_from_flags(given: Mapping[str, Any], file: str | os.PathLike | None = None) -> TrainConfig:
    """The config of `dgs train`: the ``--config`` file's settings (if any), overridden by the flags given.

    Args:
        given: flag destination (``lora_rank``) -> value, for the flags given on the command line only.
        file: a ``--config`` file.

    Raises:
        ConfigError: a flag that the chosen method does not have, or any invalid value.
    """
    values = read_config_file(file) if file else {}
    options = values.get("options")
    options = dict(options) if isinstance(options, Mapping) else ({} if options is None else options)
    flags = {flag.dest: flag for flag in option_flags()}
    method = given.get("method", values.get("method", "dgs"))
    for dest, value in given.items():
        flag = flags[dest]
        value = parse_flag_value(flag, value)
        if flag.key[0] != "options":
            values[flag.key[0]] = value
            continue
        if method not in flag.methods:
            raise ConfigError(f"{flag.flag} does not apply to method {method} (it is an option of "
                              f"{', '.join(flag.methods)})")
        if not isinstance(options, dict):
            raise ConfigError(f"{file}: options must be a mapping, got {shown(options)}")
        node = options
        for part in flag.key[1:-1]:
            existing = node.get(part)
            node[part] = dict(existing) if isinstance(existing, Mapping) else ({} if existing is None else existing)
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"{file}: options.{part} must be a mapping, got {shown(node)}")
        node[flag.key[-1]] = value
    if options or "options" in values:
        values["options"] = options
    for name in ("data", "out"):
        if not values.get(name):
            raise ConfigError(f"--{name} is required (as a flag or in --config), or give --resume RUN")
    return TrainConfig.from_dict(values, file or "command line")
