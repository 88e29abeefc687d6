"""What every script shares: argparse groups built from the settings
dataclasses, and one way to turn user errors into a one-line message."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

from pcam.errors import PcamError
from pcam.settings import section

VERBOSE = "--verbose"


def new_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A command's parser: its docstring as the description, and ``--verbose``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(VERBOSE, action="store_true",
                        help="show TensorFlow's own start-up messages (hidden by default: "
                             "without a GPU they include a 'failed call to cuInit' line "
                             "that is not a failure)")
    return parser


def quiet_tensorflow(argv) -> None:
    """Silence TensorFlow's start-up log (``pcam.quiet``) unless the command line
    asks for ``--verbose``."""
    import pcam
    from pcam import quiet

    if VERBOSE not in (sys.argv[1:] if argv is None else argv):
        quiet.install(pcam.USER_TF_LOG_LEVEL)


def add_settings(parser: argparse.ArgumentParser, cls, title: str, skip=()) -> None:
    """Add one ``--option`` per field of dataclass ``cls``, in a group.

    The option's default, type, choices and help all come from the field, so
    the command line cannot drift from the settings it fills. A nested
    section (a field holding another settings class) gets its own group.
    """
    group = parser.add_argument_group(title, summary(cls.__doc__))
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if section(f):
            add_settings(parser, section(f), f.name, skip)
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("``", "")
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, default=f.default,
                               action=argparse.BooleanOptionalAction, help=help_text)
            continue
        cpu = _cpu_recipe(f.name) if _trains(cls) else ""
        if f.default not in ("", 0, 0.0, -1, ()):
            help_text += f" (default: {f.default}{cpu})"
        elif cpu:
            help_text += f" ({cpu.lstrip('; ')})"
        kind = comma_list if isinstance(f.default, tuple) else type(f.default)
        group.add_argument(flag, dest=f.name, type=kind, default=f.default,
                           choices=f.metadata.get("choices"), help=help_text,
                           metavar=None if "choices" in f.metadata else f.name.upper())


def add_config(parser: argparse.ArgumentParser, cls) -> None:
    """``--config FILE`` and ``--print-config`` for a command whose settings are ``cls``."""
    from pcam.config import fields_of

    tables = sorted({where.split(".")[-1] for where, _, _ in fields_of(cls).values() if where})
    group = parser.add_argument_group(
        "settings file", "Options from a TOML file: the options above by their field names "
        "(lr_finetune, not --lr-finetune)"
        + (f", at the top or in their tables ({', '.join(f'[{t}]' for t in tables)})"
           if tables else "")
        + (". Every run writes RUN/config.toml, which this takes" if "train" in tables else "")
        + ". An option on the command line wins over the file.")
    group.add_argument("--config", metavar="FILE", help="read options from this TOML file")
    group.add_argument("--print-config", action="store_true",
                       help="print the resolved settings as TOML (a file --config takes) "
                            "and stop")


def config_defaults(parser: argparse.ArgumentParser, argv, cls) -> dict:
    """Make the options of ``--config FILE`` (``pcam.config.read_config``) the
    parser's defaults, so that the command line still wins; the file's options."""
    from pcam.config import read_config

    first, _ = parser.parse_known_args(argv)
    if not first.config:
        return {}
    values = read_config(first.config, cls)
    parser.set_defaults(**values)
    return values


def print_config(settings) -> int:
    """Print settings as TOML (``--print-config``); the command's exit status."""
    from pcam.config import to_toml

    print(to_toml(settings), end="", flush=True)
    return 0


def machine_defaults(parser: argparse.ArgumentParser, argv, recipe: bool = True):
    """Make the parser's defaults fit this machine and data, before the real parse.

    A first parse reads ``--data-dir`` (and ``--recipe``): in a Kaggle notebook
    with the competition mounted read-only at ``/kaggle/input``, the default
    data folder becomes that mount (``pcam.places.kaggle_competition``); with
    ``recipe``, the recipe chosen for the machine and the source sets the
    defaults of the options it changes (``pcam.recipes``). Options the user
    gives still win: they are parsed after.

    Returns:
        The ``pcam.recipes.Recipe`` chosen, or None without ``recipe``.
    """
    from pcam import places, recipes
    from pcam.data.sources import detect
    from pcam.settings import DataSettings

    first, _ = parser.parse_known_args(argv)
    data_dir = Path(first.data_dir)
    if first.data_dir == DataSettings().data_dir and not data_dir.exists():
        mounted = places.kaggle_competition()
        if mounted is not None:
            parser.set_defaults(data_dir=str(mounted))
            data_dir = mounted
    if not recipe:
        return None
    kind = first.source if first.source != "auto" else detect(data_dir)
    chosen = recipes.choose(first.recipe, kind)
    parser.set_defaults(**chosen.defaults)
    return chosen


def _trains(cls) -> bool:
    """Whether ``cls`` is a part of a run's settings, whose options the recipes set
    (``batch_size`` in predict's or slide's settings is another option)."""
    from pcam.settings import RunSettings

    return cls is RunSettings or any(section(f) is cls for f in dataclasses.fields(RunSettings))


def _cpu_recipe(name: str) -> str:
    """``; CPU recipe: V`` for an option the CPU recipe sets (class folders, and the
    competition's where it differs), else ""."""
    from pcam.recipes import CPU_FOLDERS, CPU_KAGGLE

    folders, kaggle = CPU_FOLDERS.get(name), CPU_KAGGLE.get(name)
    if folders is None and kaggle is None:
        return ""
    if kaggle is None or folders == kaggle:
        return f"; CPU recipe: {folders}" + ("" if kaggle is not None else " for class folders")
    if folders is None:
        return f"; CPU recipe: {kaggle} for the competition"
    return f"; CPU recipe: {folders} for class folders, {kaggle} for the competition"


def summary(doc: str) -> str:
    """A docstring's first paragraph as one line of help: whole sentences (its
    first line alone was cut mid-sentence), without reST's double backticks."""
    paragraph = doc.strip().split("\n\n")[0]
    return " ".join(paragraph.split()).replace("``", "")


def comma_list(text: str) -> tuple[str, ...]:
    """``'benign, malignant'`` -> ``('benign', 'malignant')``: how a tuple setting is typed."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def settings_from_args(cls, args: argparse.Namespace, **overrides):
    """Build ``cls`` (and its nested sections) from the parsed options; fields
    not on the command line keep their defaults."""
    values = {}
    for f in dataclasses.fields(cls):
        if section(f):
            values[f.name] = settings_from_args(section(f), args)
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    values.update(overrides)
    return cls(**values)


def command(main):
    """Decorate a command's ``main(argv)`` so that calling it runs it as ``run`` does
    (scripts and console entry points call it with no arguments)."""
    @functools.wraps(main)
    def wrapper(argv=None):
        run(main, argv)
    return wrapper


def os_error_line(err: OSError) -> str:
    """An OSError in one line: the file, what the system said, and what to do."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    why = err.strerror or (str(err).splitlines()[0] if str(err) else type(err).__name__)
    return (f"{where + ': ' if where else ''}{why}; free space or fix the permissions, "
            "then run the same command again (finished work is kept)")


def run(main, argv=None) -> None:
    """Call ``main(argv)`` and exit with its status.

    A ``PcamError`` is the user's to fix, and an ``OSError`` the system's
    refusal: print it as one line (no traceback) and exit 2. Ctrl-C exits
    130 with a reminder that finished work is kept.
    """
    quiet_tensorflow(argv)
    try:
        status = main(argv)
    except PcamError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        # The last resort for an operating system's refusal that no code nearer
        # to it put in words (a full disk, a read-only or forbidden folder):
        # still one line, naming the file.
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is kept; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
