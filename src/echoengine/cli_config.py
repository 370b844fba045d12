"""Config fields as command-line options: each declared once, in the config's field metadata.

Every field of the config sections (:mod:`echoengine.config`) whose
``metadata`` holds a ``"help"`` text is an option of the commands it names
(see :mod:`echoengine.cli_options` for the metadata keys), typed from the
field's annotation. Only argparse and the config are imported, so that
``echoengine --help`` answers at once.

Examples
--------
>>> [option.flag for option in config_options("split")]
['--group-regex', '--val', '--test', '--folds', '--seed', '--allow-outside-paths', '--sparse-classes']
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from typing import Any

from echoengine.config import EchoConfig

__all__ = ["TRAINING_COMMANDS", "ConfigOption", "add_config_options", "config_changes", "config_options"]

#: The commands that take a config field's option when its metadata names none.
TRAINING_COMMANDS = ("train", "cv", "embed")


def _comma_list(text: str) -> list[str]:
    """A list option: ``"3-4, 3-5"`` -> ``["3-4", "3-5"]``; ``"none"`` -> ``[]``."""
    return [] if text.strip().lower() in ("", "none") else [part.strip() for part in text.split(",") if part.strip()]


def _shown(value: Any) -> str:
    """A default as the help shows it: ``on``/``off``, lists comma-separated, an empty string not at all."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """A config field as a command-line option.

    Parameters
    ----------
    section : str
        The config section (``"train"``).
    name : str
        The field (``"learning_rate"``).
    hint : type
        The field's type (``float``).
    default : object
        The dataclass default, shown in the help.
    metadata : mapping
        The field's metadata: ``help`` and optionally ``flag``, ``choices``,
        ``metavar``, ``commands``.
    """

    section: str
    name: str
    hint: Any
    default: Any
    metadata: typing.Mapping[str, Any]

    @property
    def flag(self) -> str:
        """The option's name, e.g. ``"--lr"``."""
        return self.metadata.get("flag", "--" + self.name.replace("_", "-"))

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments that holds the value (``"lr"``)."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def commands(self) -> tuple[str, ...]:
        """The subcommands that take the option."""
        return tuple(self.metadata.get("commands", TRAINING_COMMANDS))

    @property
    def help(self) -> str:
        """The help text, ending with the dataclass default (when it is not empty)."""
        shown = _shown(self.default)
        return self.metadata["help"] + (f" (default: {shown})" if shown else "")

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """Add the option to a parser or argument group; it defaults to ``None`` (not given)."""
        options: dict[str, Any] = {"dest": self.dest, "default": None, "help": self.help.replace("%", "%%")}
        if self.hint is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(self.hint) is tuple:
            options.update(type=_comma_list, metavar=self.metadata.get("metavar", "A,B"))
        elif self.hint in (int, float, str):
            options["type"] = self.hint
        else:
            raise TypeError(f"{self.section}.{self.name}: no command-line type for {self.hint}")
        options.update({key: self.metadata[key] for key in ("choices", "metavar") if key in self.metadata})
        parser.add_argument(self.flag, **options)


@functools.cache
def config_options(command: str | None = None) -> tuple[ConfigOption, ...]:
    """The config fields that are command-line options (of ``command``, or of any command), in config order.

    Examples
    --------
    >>> [option.flag for option in config_options("split")]
    ['--group-regex', '--val', '--test', '--folds', '--seed', '--allow-outside-paths', '--sparse-classes']
    """
    found = []
    for section, cls in typing.get_type_hints(EchoConfig).items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if "help" in field.metadata:
                found.append(ConfigOption(section, field.name, hints[field.name], field.default, field.metadata))
    return tuple(option for option in found if command is None or command in option.commands)


def add_config_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the config options of ``command`` to its parser, in one argument group per config section."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in config_options(command):
        if option.section not in groups:
            groups[option.section] = parser.add_argument_group(f"config [{option.section}]")
        option.add_to(groups[option.section])


def config_changes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config values given on the command line, as ``{"section": {"field": value}}``.

    An option left out (``None``) is not a change, so the ``--config`` file's
    value stays; ``--no-x`` is a change to false.
    """
    changes: dict[str, dict[str, Any]] = {}
    for option in config_options(args.command):
        value = getattr(args, option.dest, None)
        if value is not None:
            changes.setdefault(option.section, {})[option.name] = value
    return changes
