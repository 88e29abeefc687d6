"""The pieces settings dataclasses are made of (``pcam.settings``): a field with
its command-line help, the checks a ``__post_init__`` runs, and settings to and
from plain data and JSON files.

A field's ``metadata`` holds ``help`` (argparse's help, ``pcam.commands.cli``),
and optionally ``choices`` and ``resumable``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import field
from pathlib import Path


def opt(default, help, **meta):
    return field(default=default, metadata={"help": help, **meta})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check(settings, **rules) -> None:
    """Refuse values no run can use, naming the option and what it accepts.

    Every field with ``choices`` is checked against them; ``rules`` maps
    other field names to ``(test, what is allowed)``. Run in each class's
    ``__post_init__``, so that settings from the command line, from Python
    and from a saved ``config.json`` (``from_dict``) are all checked before
    anything is written.

    Raises:
        PcamError: the first value refused.
    """
    from pcam.errors import PcamError

    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise PcamError(f"{flag(f.name)} {value!r}: choose one of "
                            f"{', '.join(str(c) for c in choices)}")
        if f.name in rules:
            test, allowed = rules[f.name]
            if isinstance(value, bool) or not test(value):
                raise PcamError(f"{flag(f.name)} {value!r}: must be {allowed}")


def at_least(low):
    return lambda v: isinstance(v, int) and v >= low, f"a whole number, at least {low}"


def positive_number():
    return lambda v: isinstance(v, (int, float)) and v > 0, "a number above 0"


def non_negative_number():
    return lambda v: isinstance(v, (int, float)) and v >= 0, "a number, 0 or more"


def fraction():
    return (lambda v: isinstance(v, (int, float)) and 0 <= v < 1,
            "a number from 0 up to, not including, 1")


def section(f: dataclasses.Field):
    """The settings class a field holds as a nested section, else None."""
    factory = f.default_factory
    return factory if dataclasses.is_dataclass(factory) else None


def to_dict(settings) -> dict:
    """Settings (possibly nested) as plain JSON-ready data."""
    return dataclasses.asdict(settings)


def from_dict(cls, data: dict):
    """Rebuild settings of type ``cls`` from ``to_dict`` output.

    Unknown keys are refused so that a stale config is noticed, not ignored.
    """
    from pcam.errors import PcamError

    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise PcamError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}")
    kwargs = {}
    for key, value in data.items():
        nested = section(names[key])
        if isinstance(names[key].default, tuple) and isinstance(value, list):
            value = tuple(value)  # JSON has no tuples: settings equal to those saved
        kwargs[key] = from_dict(nested, value) if nested else value
    return cls(**kwargs)


def to_json(settings, path: Path) -> None:
    """Write settings as indented JSON, atomically."""
    from pcam.io import atomic_write_json

    atomic_write_json(Path(path), to_dict(settings))


def from_json(cls, path: Path):
    return from_dict(cls, json.loads(Path(path).read_text()))


def changed_on_resume(now, then: dict) -> list[str]:
    """The settings (``section.key``) in which ``now`` differs from a started
    run's saved ``then`` in what is trained: every field but those declared
    ``resumable`` (the run's name and place, its data's place, devices).

    A setting missing from ``then`` is newer than the run (e.g.
    ``train.oof_tta``) and is not compared: no value given now could match
    it, and refusing would strand every run started by an older pcam.
    """
    may_change = {f.name for f in dataclasses.fields(now) if f.metadata.get("resumable")}
    now = to_dict(now)
    return [f"{part}.{key}" for part in now if part not in may_change
            for key in now[part] if key in then.get(part, {})
            and now[part][key] != then[part][key]]
