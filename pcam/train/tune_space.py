"""The search space of a study (``pcam.train.tune``): which settings fields, over what.

A space is a TOML file with a table per settings field::

    [lr_finetune]
    low = 1e-4
    high = 1e-2
    log = true
    [batch_size]
    choices = [16, 32, 64]

or ``DEFAULT_SPACE``. Every entry is checked against the settings (the name,
and the settings' acceptance of both ends of a range or of every choice)
before any trial runs. Nothing here imports TensorFlow or Optuna.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pcam.config import fields_of, nest_settings, tomllib
from pcam.errors import PcamError
from pcam.settings import RunSettings, to_dict

# Fields a search may not set: where things are, which run and fold, devices.
NOT_SEARCHED = {"run", "runs_dir", "fold", "report", "recipe", "data_dir", "store_dir",
                "source", "classes", "positive", "workers", "shard_tiles", "skip_bad",
                "folds", "seed", "groups", "group_pattern", "max_tiles", "strategy",
                "precision", "jit", "steps_per_execution", "deterministic", "tensorboard",
                "oof_tta"}

# Histology defaults: learning rates over two decades (log-uniform), the batch
# sizes a CPU or one GPU holds, the head's dropout, label smoothing up to 0.1,
# and colour/stain jitter from none to about twice pcam's defaults (a new
# scanner or stain is where jitter helps or hurts, issue 12's ablation).
DEFAULT_SPACE = {
    "lr_finetune": {"low": 1e-4, "high": 1e-2, "log": True},
    "batch_size": {"choices": [16, 32, 64]},
    "dropout": {"low": 0.0, "high": 0.6},
    "label_smoothing": {"low": 0.0, "high": 0.1},
    "hue": {"low": 0.0, "high": 0.08},
    "stain": {"low": 0.0, "high": 0.1},
}


@dataclass(frozen=True)
class Dimension:
    """One searched settings field: a range (``low``..``high``, ``log``-uniform or
    not; whole numbers for an int field) or a list of ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        """The trial's value of this field (Optuna's ``suggest_*``)."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        field = fields_of(RunSettings)[self.name][2]
        if isinstance(field.default, int) and not isinstance(field.default, bool):
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> dict:
        return ({"choices": list(self.choices)} if self.choices
                else {"low": self.low, "high": self.high, "log": self.log})


def read_space(path: str | Path | None, template: RunSettings) -> list[Dimension]:
    """The search space of a TOML file (a table per field), or ``DEFAULT_SPACE``;
    every entry checked against the settings before any trial runs.

    Raises:
        PcamError: a name that is no settings field (or one a search may not
            set), a range or a list the settings refuse at either end.
    """
    where = str(path) if path else "the default space"
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PcamError(f"--space {path}: no such file") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise PcamError(f"--space {path}: cannot read it as TOML ({err})") from None
    else:
        data = DEFAULT_SPACE
    if not data:
        raise PcamError(f"{where}: the space names no settings field; give a table per field, "
                        "e.g. [lr_finetune] low = 1e-4, high = 1e-2, log = true")
    return [_dimension(where, name, entry, template) for name, entry in data.items()]


def _dimension(where: str, name: str, entry, template: RunSettings) -> Dimension:
    known = {n for n in fields_of(RunSettings) if n not in NOT_SEARCHED}
    if name not in known:
        raise PcamError(f"{where}: {name!r} is not a setting a search can set; choose from "
                        f"{', '.join(sorted(known))}")
    if not isinstance(entry, dict) or not ({"choices"} <= set(entry) or {"low", "high"} <= set(
            entry)) or set(entry) - {"low", "high", "log", "choices"}:
        raise PcamError(f"{where}: [{name}] needs low and high (and log = true for a "
                        "log-uniform range) or choices = [...], nothing else")
    if "choices" in entry:
        dim = Dimension(name, choices=tuple(entry["choices"]))
        ends = list(dim.choices)
        if not ends:
            raise PcamError(f"{where}: [{name}] choices is empty")
    else:
        dim = Dimension(name, float(entry["low"]), float(entry["high"]), bool(entry.get("log")))
        if not dim.low < dim.high or (dim.log and dim.low <= 0):
            raise PcamError(f"{where}: [{name}] needs low < high" + (", both above 0 for "
                            "log = true" if dim.log else ""))
        int_field = isinstance(fields_of(RunSettings)[name][2].default, int)
        ends = [int(dim.low), int(dim.high)] if int_field else [dim.low, dim.high]
    for value in ends:
        try:
            apply(template, {name: value})
        except (PcamError, TypeError) as err:
            raise PcamError(f"{where}: [{name}] {value!r} is refused ({err})") from None
    return dim


def apply(template: RunSettings, params: dict) -> RunSettings:
    """``template`` with the fields ``params`` names set to its values."""
    return nest_settings(params, RunSettings, to_dict(template))
