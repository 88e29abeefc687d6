"""Settings as files: ``--config FILE`` reads them, every run leaves one behind.

The file is TOML: the fields of a settings class (``pcam.settings``), its
nested sections as tables, exactly as ``config.json`` nests them::

    backbone_note = "top-level fields of the class come first"
    [data]
    data_dir = "my_folders"
    [train]
    epochs_finetune = 40
    lr_finetune = 1e-3

TOML rather than YAML: types are explicit (``no``, ``off`` and ``1e-3`` stay
a string, a string and a float, where YAML 1.1 readers make the first two
False and PyYAML the third a string), Python reads it without a dependency
(``tomllib``, 3.11; ``tomli`` before), and it is what ``pyproject.toml``
users already write. A key may also be left in its section's place at the
top level, since every option name is unique across sections.

The file sets defaults; the command line still wins (``pcam.commands.cli``).
A run writes ``config.toml`` beside ``config.json`` (``RunDir.config_toml``):
``train.py --config runs/NAME/config.toml --run NEW`` trains the same recipe
again. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

from pcam.errors import PcamError
from pcam.settings import from_dict, section, to_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def fields_of(cls, where: str = "", owner=None) -> dict[str, tuple]:
    """Every option of ``cls``: its name -> (the dotted sections holding it,
    "" at the top; the settings class that owns it; its field)."""
    out = {}
    for f in dataclasses.fields(cls):
        if section(f):
            out.update(fields_of(section(f), f"{where}{f.name}.", section(f)))
        else:
            out[f.name] = (where.rstrip("."), owner or cls, f)
    return out


def read_config(path: str | Path, cls) -> dict:
    """The options a TOML file sets for settings of type ``cls``, as a flat
    ``{option: value}`` (argparse's destinations), checked.

    A key is accepted at the top, in its own table or in a table named by
    the end of its sections (``[train]`` for ``training.train`` of a
    comparison): option names are unique across sections.

    Raises:
        PcamError: the file cannot be read or parsed, a key is not an option
            of ``cls`` (the valid ones named), a value has the wrong type, or
            the settings refuse it: one line naming the file and the key.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PcamError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PcamError(f"--config {path}: cannot read it ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise PcamError(f"{path}: not valid TOML ({err})") from None
    known = fields_of(cls)
    flat = {}
    for key, value in dotted_items(data):
        *tables, name = key.split(".")
        if name not in known or not known[name][0].endswith(".".join(tables)):
            raise PcamError(f"{path}: unknown key {key!r}; {cls.__name__} takes "
                            f"{', '.join(sorted(known))}")
        flat[name] = _typed(path, key, value, known[name][2])
        _refused(path, key, name, flat[name], known[name][1])
    return flat


def _refused(path: Path, key: str, name: str, value, owner) -> None:
    """Raise the settings' own refusal of ``value``, naming the file and the key.

    The value is checked in its class with the other fields at their
    defaults; a class whose defaults alone are refused (a comparison needs
    backbones) checks it when the command builds its settings, where the
    command line may supply the rest.
    """
    try:
        owner()
    except (PcamError, TypeError):
        return
    try:
        owner(**{name: value})
    except PcamError as err:
        raise PcamError(f"{path}: {key}: {err}") from None


def dotted_items(data: dict, prefix: str = ""):
    """(dotted key, value) of nested dicts (a TOML document, ``to_dict`` output):
    every table opened, ``"train.lr_finetune"``."""
    for key, value in data.items():
        if isinstance(value, dict):
            yield from dotted_items(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _typed(path: Path, key: str, value, f: dataclasses.Field):
    """``value`` as the field's type (an int where a float is wanted, a list as a tuple)."""
    default = f.default
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
            return tuple(value)
    elif isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, type(default)) and not isinstance(value, bool):
        return value
    what = {tuple: "a list", bool: "true or false", float: "a number", int: "a whole number",
            str: "a string"}.get(type(default), type(default).__name__)
    raise PcamError(f"{path}: {key} = {value!r}: must be {what}")


def nest_settings(flat: dict, cls, base: dict | None = None):
    """Settings of type ``cls`` from a flat ``{option: value}`` (``read_config``'s),
    set over ``base`` (``to_dict`` output of settings of ``cls``); the options
    neither gives at their defaults."""
    known = fields_of(cls)
    nested = base if base is not None else {}
    for name, value in flat.items():
        table = nested
        for part in filter(None, known[name][0].split(".")):
            table = table.setdefault(part, {})
        table[name] = value
    return from_dict(cls, nested)


# --- writing -----------------------------------------------------------------------------

def to_toml(settings) -> str:
    """Settings as a TOML document ``read_config`` reads back to the same settings."""
    return "\n".join(_tables(to_dict(settings), "")) + "\n"


def _tables(data: dict, name: str) -> list[str]:
    """A table's lines (its plain keys first, as TOML wants), then its sub-tables'."""
    lines = ([f"[{name}]"] if name else []) + [
        f"{k} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, value in data.items():
        if isinstance(value, dict):
            lines += ["", *_tables(value, f"{name}.{key}" if name else key)]
    return lines


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    # JSON's string escapes (\n, \", \\, \uXXXX) are TOML's basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)


def write_config(settings, path: Path) -> None:
    """Write ``to_toml(settings)`` to ``path`` atomically."""
    from pcam.io import atomic_write_text

    atomic_write_text(Path(path), f"# pcam {type(settings).__name__}: --config takes this file; "
                      "an option on the command line wins over it\n" + to_toml(settings))
