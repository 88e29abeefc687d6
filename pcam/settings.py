"""Settings as frozen dataclasses whose defaults are the recommended recipe.

Every field carries its command-line help in ``metadata["help"]``, so the
scripts build their argparse groups from these classes (``pcam.commands.cli``) and
the library only ever receives settings objects, never a Namespace. The
resolved settings are written beside everything a run produces
(``to_json``) and read back with ``from_json``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


def _opt(default, help, **meta):
    return field(default=default, metadata={"help": help, **meta})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(settings, **rules) -> None:
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
            raise PcamError(f"{_flag(f.name)} {value!r}: choose one of "
                            f"{', '.join(str(c) for c in choices)}")
        if f.name in rules:
            test, allowed = rules[f.name]
            if isinstance(value, bool) or not test(value):
                raise PcamError(f"{_flag(f.name)} {value!r}: must be {allowed}")


def _at_least(low):
    return lambda v: isinstance(v, int) and v >= low, f"a whole number, at least {low}"


def _positive_number():
    return lambda v: isinstance(v, (int, float)) and v > 0, "a number above 0"


def _non_negative_number():
    return lambda v: isinstance(v, (int, float)) and v >= 0, "a number, 0 or more"


def _fraction():
    return (lambda v: isinstance(v, (int, float)) and 0 <= v < 1,
            "a number from 0 up to, not including, 1")


@dataclass(frozen=True)
class DataSettings:
    """Where the images are and how they become a tile store.

    Two kinds of source: the Kaggle competition's layout, or class folders.
    ``classes``, ``positive`` and ``tile_size`` may be left empty: the run
    fills them in from what the source holds, and saves them resolved in its
    ``config.json``.
    """

    data_dir: str = _opt(
        "data/histopathologic-cancer-detection",
        "the images: a Kaggle competition folder (train/, test/, train_labels.csv, "
        "sample_submission.csv) or class folders (DIR/<class>/<image>, or DIR/train/<class>/... "
        "with an optional DIR/test/)")
    source: str = _opt("auto", "what --data-dir holds: auto (recognise it), kaggle, or folders",
                       choices=("auto", "kaggle", "folders"))
    classes: tuple = _opt(
        (), "class folders to use, comma-separated, in label order (default: every folder, "
            "sorted by name); naming fewer selects a subset")
    positive: str = _opt(
        "", "with two classes, the one whose probability is reported (class 1), e.g. "
            "malignant (default: the second in order; PCam: tumour)")
    tile_size: int = _opt(
        0, "side of the square tiles the store holds (default: the images' own size when "
           "they all share one square size; otherwise required: images are centre-cropped "
           "to a square and resized)")
    max_tile_size: int = _opt(
        0, "with --tile-size 0, images larger than this are resized down to it (0: no "
           "limit; 128 px tiles hold 3x fewer pixels than 224 px images for a CPU to learn "
           "from)")
    store_dir: str = _opt(
        "", "where the tile store lives (default: stores/NAME-HASH in the working folder, "
            "never inside the images; a store an earlier pcam made in DIR/store is used "
            "where it is)")
    skip_bad: bool = _opt(
        False, "leave unreadable or malformed tiles out (their list is written "
               "beside the store) instead of stopping")
    workers: int = _opt(0, "processes that decode tiles (0: one per core)")
    # 2,048 tiles = 57 MB. The shard is the unit of work of the ingest's
    # processes and of a multi-worker split: 20,000 tiles in 4,096-tile shards
    # made 5 jobs for 2 processes, one of them doing 3 (ingest at 1.28x a
    # one-process tifffile loop, against 1.6-2.2x with 2,048 or 1,024).
    shard_tiles: int = _opt(
        2048, "tiles per TFRecord shard (2048 tiles = 57 MB; 108 shards for the "
              "competition's train set, enough to split over many workers)")

    def __post_init__(self):
        _check(self, workers=_at_least(0), shard_tiles=_at_least(1), tile_size=_at_least(0),
               max_tile_size=_at_least(0))

    @property
    def store_path(self) -> Path:
        from pcam.places import default_store

        return (Path(self.store_dir) if self.store_dir
                else default_store(self.data_dir, self.tile_size, self.max_tile_size))


@dataclass(frozen=True)
class FoldSettings:
    """How train tiles are split into folds and how classes are balanced."""

    folds: int = _opt(5, "number of cross-validation folds (at least 2)")
    groups: str = _opt(
        "", "CSV mapping id -> slide (e.g. PCam's public patch_id_wsi_full.csv); keeps one slide's "
            "tiles in one fold (StratifiedGroupKFold)")
    group_pattern: str = _opt(
        "", "regular expression whose first group, found in each image's file name, is its "
            "patient or slide, e.g. 'CRC-Prim-HE-(\\d+)'; keeps each group in one fold")
    balance: str = _opt(
        "weights", "class balance: weights (loss weights from label counts) or "
                   "resample (draw classes equally)", choices=("weights", "resample"))
    max_tiles: int = _opt(0, "use a stratified subset of this many train tiles (0: all)")
    seed: int = _opt(0, "seed for folds, shuffling and augmentation")

    def __post_init__(self):
        # --folds is checked against the tiles by pcam.data.folds, which knows the class counts.
        _check(self, max_tiles=_at_least(0), seed=_at_least(0))


@dataclass(frozen=True)
class AugmentSettings:
    """Training-time augmentation. Defaults: the 8 dihedral views, and colour and
    H&E stain jitter.

    Why jitter is on by default: a model is scored on slides it never saw, and
    slides differ in stain. The CPU recipe without it scored 0.949 on its own
    training slides and 0.873 on PCam's hidden test slides; with this jitter
    (same seed, folds and epochs) 0.915 on the hidden test slides (issue 16,
    maintainers' measurement). Tellez et al. 2019 found HED stain plus
    HSV/brightness/contrast jitter generalised across centres better than
    stain normalisation. Set them to 0 for a dataset whose colour is itself
    the signal. Colour and stain jitter are cheaper as layers inside the
    model when there is an accelerator (they then run there);
    ``benchmarks/pipeline.py`` shows both costs.
    """

    dihedral: bool = _opt(True, "random flips and 90-degree rotations (PCam labels do not "
                                "depend on orientation)")
    brightness: float = _opt(0.1, "max brightness shift, fraction of 255 (0: off)")
    contrast: float = _opt(0.2, "max contrast change, fraction (0: off)")
    saturation: float = _opt(0.2, "max saturation change, fraction (0: off)")
    hue: float = _opt(0.04, "max hue shift, fraction of the colour wheel (0: off)")
    stain: float = _opt(0.05, "H&E stain jitter strength: each stain's optical density "
                              "scaled by U(1-s, 1+s) and shifted by U(-s, s) (0: off)")
    zoom: float = _opt(0.0, "max random zoom-in, fraction of the tile (e.g. 0.15)")
    centre_crop: int = _opt(0, "keep only the centre NxN pixels (0: whole tile; the label "
                               "is about the centre 32x32)")

    def __post_init__(self):
        _check(self, brightness=_non_negative_number(), contrast=_fraction(),
               saturation=_fraction(), hue=_fraction(), stain=_non_negative_number(),
               zoom=_fraction(),
               # At most the tile size: checked against the store (training.run_cv).
               centre_crop=_at_least(0))


@dataclass(frozen=True)
class InputSettings:
    """How batches are fed."""

    batch_size: int = _opt(128, "tiles per batch (per replica when several devices)")
    cache: str = _opt("auto", "keep the whole store in RAM as one uint8 array for training and "
                              "validation: auto (when it fits in half the free memory), yes, no "
                              "(stream it from disk)", choices=("auto", "yes", "no"))
    # 8,192 tiles = 226 MB of RAM. Only when streaming: in RAM every epoch is a
    # full shuffle. Store order is already random for Kaggle's hashed ids.
    shuffle_buffer: int = _opt(8192, "tiles in the shuffle buffer when the store is streamed "
                                     "from disk (in RAM, every epoch is a full shuffle)")

    def __post_init__(self):
        _check(self, batch_size=_at_least(1), shuffle_buffer=_at_least(1))


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


@dataclass(frozen=True)
class ModelSettings:
    """Which network: a backbone from the registry and its head."""

    backbone: str = _opt("resnet50", "backbone from the registry (a wrong name lists them): "
                                     "resnet50, resnet50v2, densenet121, efficientnetv2b0, "
                                     "efficientnetv2s, convnext-tiny, simple-cnn, cpu-cnn, "
                                     "coatnet-0 (the last three have no ImageNet weights: "
                                     "trained from scratch)")
    image_size: int = _opt(0, "input size the backbone sees; tiles are resized to it inside "
                              "the model (0: with ImageNet weights, the tiles fed upsampled 2x "
                              "up to the backbone's native size, e.g. PCam's 96 px to 192; "
                              "from random weights, the size of the tiles fed)")
    weights: str = _opt("imagenet", "initial backbone weights: imagenet, none, pcam (cpu-cnn "
                                    "trained on PCam, shipped with pcam: a histology start "
                                    "without a download), a weights "
                                    "file, or a pcam model of the same backbone (a run's "
                                    "fold_K/best.keras: its backbone is copied, e.g. cpu-cnn "
                                    "trained on PCam); simple-cnn, cpu-cnn and coatnet-0 have "
                                    "no ImageNet weights in Keras, so for them imagenet means "
                                    "none (random)")
    dense_units: int = _opt(256, "units of the head's hidden Dense layer")
    dropout: float = _opt(0.5, "dropout before the output unit")

    def __post_init__(self):
        # The backbone's own smallest size is checked by pcam.models.registry, which knows it.
        _check(self, image_size=_at_least(0), dense_units=_at_least(1), dropout=_fraction())


@dataclass(frozen=True)
class TrainSettings:
    """The two phases: head only on a frozen backbone, then fine-tuning.

    The defaults are the recommended GPU recipe for ResNet50 on the
    competition's data (see README for what it reaches).
    """

    epochs_frozen: int = _opt(2, "epochs of phase 1 (backbone frozen, head trained)")
    epochs_finetune: int = _opt(10, "epochs of phase 2 (backbone unfrozen)")
    lr_frozen: float = _opt(1e-3, "Adam learning rate of phase 1")
    lr_finetune: float = _opt(1e-4, "peak learning rate of phase 2 (cosine decay to 0)")
    unfreeze: int = _opt(0, "phase 2 unfreezes the top N backbone blocks, stem included "
                            "(ResNet50 has 17: 3 is stage conv5; 0: all)")
    schedule: str = _opt("cosine", "phase 2 learning rate: cosine decay, or plateau "
                                   "(halve when validation AUC stalls)",
                         choices=("cosine", "plateau"))
    patience: int = _opt(3, "epochs without validation AUC gain before early stopping "
                            "(with the cosine schedule, counted in the phase's second half)")
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing (e.g. 0.05)")
    tensorboard: bool = _opt(False, "write TensorBoard logs in the fold's folder")
    ema: bool = _opt(False, "keep an exponential moving average of the weights (Keras' "
                            "use_ema): validation, the best-epoch choice and best.keras use "
                            "the averaged weights")
    ema_momentum: float = _opt(0.99, "with --ema, the average's momentum per training step "
                                     "(0.99: the last ~100 steps weigh most)")
    oof_tta: int = _opt(8, "dihedral views averaged in each fold's out-of-fold predictions, "
                           "from which the cross-validated figures and the threshold come "
                           "(8, as predict.py's default: they describe the model as it will "
                           "be used)", choices=(1, 2, 4, 8))

    def __post_init__(self):
        from pcam.errors import PcamError

        _check(self, epochs_frozen=_at_least(0), epochs_finetune=_at_least(0),
               lr_frozen=_positive_number(), lr_finetune=_positive_number(),
               unfreeze=_at_least(0), patience=_at_least(0), label_smoothing=_fraction(),
               ema_momentum=_fraction())
        if self.epochs_frozen + self.epochs_finetune == 0:
            # Nothing would be trained, and the folds would be marked finished.
            raise PcamError("--epochs-frozen 0 --epochs-finetune 0: nothing to train; give "
                            "at least one phase an epoch")


@dataclass(frozen=True)
class DeviceSettings:
    """Where and how the arithmetic runs."""

    strategy: str = _opt("auto", "auto (TPU, else all GPUs, else CPU), cpu, mirrored, "
                                 "multiworker (TF_CONFIG), tpu",
                         choices=("auto", "cpu", "mirrored", "multiworker", "tpu"))
    precision: str = _opt("float32", "float32, mixed_float16 (GPUs) or mixed_bfloat16 "
                                     "(TPUs, recent CPUs); the output stays float32",
                          choices=("float32", "mixed_float16", "mixed_bfloat16"))
    jit: bool = _opt(False, "compile the training step with XLA")
    steps_per_execution: int = _opt(1, "batches per call into the device (raise on TPUs)")
    deterministic: bool = _opt(False, "deterministic ops (slower; same seed, same weights)")

    def __post_init__(self):
        _check(self, steps_per_execution=_at_least(1))


@dataclass(frozen=True)
class RunSettings:
    """Everything one training run needs; saved as ``config.json`` in the run."""

    recipe: str = _opt("auto", "the defaults to train with: gpu (ResNet50 from ImageNet "
                               "weights, the settings below), cpu (cpu-cnn: from the shipped "
                               "PCam backbone for class folders, 128 px, 60 epochs, batch 16, "
                               "no colour jitter; from scratch, 30 epochs for the competition), "
                               "or auto (gpu when a GPU or TPU is found, else cpu); options "
                               "given on the command line always win",
                       choices=("auto", "gpu", "cpu"), resumable=True)
    run: str = _opt("", "run name: results go to RUNS_DIR/RUN (default: the data folder's "
                        "name and a hash of the settings, so the same command again resumes "
                        "the same run; RUNS_DIR/latest names the last run)", resumable=True)
    runs_dir: str = _opt("runs", "folder that holds the runs", resumable=True)
    fold: int = _opt(-1, "train only this fold (to spread folds over machines; -1: all)",
                     resumable=True)
    report: bool = _opt(True, "write the evaluation report (RUN/report/index.html, see "
                              "scripts/evaluate.py) when the last fold finishes", resumable=True)
    # Where the data is, and the devices, may change when a run resumes (a moved
    # folder, another machine); every other section is what is trained.
    data: DataSettings = field(default_factory=DataSettings, metadata={"resumable": True})
    folds: FoldSettings = field(default_factory=FoldSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    inputs: InputSettings = field(default_factory=InputSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    device: DeviceSettings = field(default_factory=DeviceSettings, metadata={"resumable": True})

    def __post_init__(self):
        _check(self, fold=_at_least(-1))

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run


@dataclass(frozen=True)
class PredictSettings:
    """How a run's fold models predict the test set (defaults: the recommended ensemble).

    Every finished fold, all 8 dihedral views, probabilities averaged.
    """

    run: tuple = _opt((), "the run folder(s) to predict with, as scripts/train.py wrote them "
                          "(runs/NAME); several runs (--run A --run B, or --run A B) are "
                          "ensembled: each run's folds are combined, then the runs, each "
                          "run counting equally")
    folds: tuple = _opt((), "fold numbers to ensemble, the same for every run; empty: every "
                            "finished fold")
    tta: int = _opt(8, "test-time augmentation: dihedral views per tile (1: none; 2: + a "
                       "left-right flip; 4: + the up-down flip and the 180-degree rotation; "
                       "8: all flips and rotations)", choices=(1, 2, 4, 8))
    average: str = _opt("mean", "how the folds' (and the runs') predictions are combined: "
                                "mean of probabilities, or rank (mean of rank-normalised "
                                "predictions; fine for AUC)", choices=("mean", "rank"))
    batch_size: int = _opt(0, "images per model call, tiles x TTA views (0: twice the run's "
                              "training batch; prediction keeps no activations for "
                              "gradients, so that fits wherever training fitted)")
    data_dir: str = _opt("", "competition folder (default: the run's, from its config.json)")
    store_dir: str = _opt("", "tile store folder (default: the run's; with --data-dir, "
                              "that folder's own, under stores/)")
    out: str = _opt("", "CSV to write (default: submissions/RUN.csv for a Kaggle run, "
                        "predictions/RUN-WHAT.csv for images, WHAT naming the folder or "
                        "file predicted, so that other images never overwrite it; its "
                        "settings go beside it as .json)")
    answers: str = _opt("", "the answers, to score the predictions: a CSV of id,label for "
                            "a Kaggle test set (prints the AUC), or a labelled class-folder "
                            "set DIR/<class>/<image> (predicts its images, writes the report)")
    images: tuple = _opt((), "image files or folders to predict instead of the test set (any "
                             "size: made into tiles as the run's store made them); writes a CSV "
                             "of path, predicted class and one probability per class")

    def __post_init__(self):
        from pcam.errors import PcamError

        if isinstance(self.run, (str, Path)):  # one run, as Python callers name it
            object.__setattr__(self, "run", (str(self.run),) if str(self.run) else ())
        object.__setattr__(self, "run", tuple(str(r) for r in self.run))
        _check(self, batch_size=_at_least(0),
               folds=(lambda v: all(isinstance(k, int) and k >= 0 for k in v),
                      "fold numbers, 0 or more"),
               run=(lambda v: all(v), "run folders, none empty"))
        # The same run twice would silently count double in the mean.
        seen = [Path(r).resolve() for r in self.run]
        twice = sorted({r for r, p in zip(self.run, seen) if seen.count(p) > 1})
        if twice:
            raise PcamError(f"--run {twice[0]} is given more than once; name each run once")


@dataclass(frozen=True)
class EvaluateSettings:
    """What the evaluation report covers and how it picks its operating point.

    A run's out-of-fold predictions, or a submission scored against an
    answer key; the threshold is chosen on out-of-fold predictions.
    """

    run: str = _opt("", "the run to report on (runs/NAME): its out-of-fold predictions, "
                        "per fold and pooled, and its training curves")
    submission: str = _opt("", "a submission CSV to report on instead, with --answers "
                               "(the threshold then comes from its run's OOF predictions)")
    answers: str = _opt("", "CSV of id,label for the submission's tiles")
    target_sensitivity: float = _opt(
        0.0, "choose the threshold with at least this sensitivity on the OOF predictions, "
             "e.g. 0.95 (default 0: maximise Youden's J = sensitivity + specificity - 1)")
    bootstrap: int = _opt(1000, "bootstrap resamples for the 95%% AUC intervals")
    gallery: int = _opt(12, "tiles in each gallery of the most confident false positives "
                            "and false negatives (0: no galleries)")
    out: str = _opt("", "report folder (default: RUN/report, or the submission's name "
                        "+ '-report' beside it)")

    def __post_init__(self):
        _check(self, target_sensitivity=_fraction(), bootstrap=_at_least(0),
               gallery=_at_least(0))


@dataclass(frozen=True)
class ExplainSettings:
    """Which tiles Grad-CAM explains, with which model, and where the pictures go."""

    run: str = _opt("", "the run whose model explains (runs/NAME)")
    model: str = _opt("", "a .keras model file to explain with instead of a run's fold "
                          "(any pcam model, or a Keras CNN ending in one sigmoid unit)")
    fold: int = _opt(-1, "the run's fold whose best model explains (-1: the first finished "
                         "fold)")
    ids: tuple = _opt((), "tile ids to explain, looked up in the tile stores (train, then test)")
    images: tuple = _opt((), "image files or folders to explain (TIFF, PNG, JPEG: made "
                             "into tiles as the run's store made them)")
    target: str = _opt("", "whose evidence the heat map shows: a class name of the run, or "
                           "predicted (each tile's own answer); default: the positive class "
                           "of a two-class run, else predicted")
    data_dir: str = _opt("", "competition folder whose stores hold the ids (default: the "
                             "run's)")
    store_dir: str = _opt("", "tile store folder (default: the run's; with --data-dir, that "
                              "folder's own, under stores/)")
    out: str = _opt("", "folder for the pictures (default: RUN/explain/fold_K, or explain/ "
                        "beside --model)")

    def __post_init__(self):
        _check(self, fold=_at_least(-1))


@dataclass(frozen=True)
class HeatmapSettings:
    """Which run maps which images, and how densely (see pcam/explain/heatmap.py)."""

    run: str = _opt("", "the run folder whose model(s) map the images (runs/NAME)")
    folds: tuple = _opt((), "fold numbers to ensemble; empty: every finished fold")
    images: tuple = _opt((), "image files or folders of images larger than the run's tile "
                             "(TIFF, PNG, JPEG)")
    stride: int = _opt(0, "pixels between neighbouring windows (0: a third of the tile)")
    tta: int = _opt(1, "test-time views per window (1: none; 2, 4 or 8 dihedral views)",
                    choices=(1, 2, 4, 8))
    region: int = _opt(-1, "side of the centre square a window's answer is about (-1: the "
                           "run's label region, e.g. 32 for the Kaggle PCam store, else a "
                           "third of the tile; 0: the whole window)")
    batch_size: int = _opt(256, "windows x views per model call")
    out: str = _opt("heatmaps", "folder for IMAGE-heatmap.png and IMAGE-heatmap.csv")

    def __post_init__(self):
        _check(self, stride=_at_least(0), region=_at_least(-1), batch_size=_at_least(1),
               folds=(lambda v: all(isinstance(k, int) and k >= 0 for k in v),
                      "fold numbers, 0 or more"))


@dataclass(frozen=True)
class CompareSettings:
    """Which backbones are compared, on the same folds, and where (pcam.train.compare, pcam.report.compare).

    ``training`` is the template of every backbone's run: all the training
    options, the backbone replaced by each of ``backbones``.
    """

    backbones: tuple = _opt((), "backbones to compare, comma-separated, e.g. "
                                "resnet50v2,densenet121,simple-cnn (a wrong name lists them)")
    name: str = _opt("", "comparison name: its runs go to RUNS_DIR/NAME/<backbone>/ and its "
                         "report to RUNS_DIR/NAME/report/ (default: a timestamp)")
    report_only: bool = _opt(False, "train nothing: gather the runs under RUNS_DIR/NAME into "
                                    "its report (after --backbones X on several machines)")
    bootstrap: int = _opt(1000, "bootstrap resamples for the AUC intervals and the paired "
                                "differences")
    speed_tiles: int = _opt(256, "tiles each backbone's model predicts to measure tiles/s "
                                 "(0: not measured)")
    training: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self):
        from pcam.errors import PcamError

        _check(self, bootstrap=_at_least(1), speed_tiles=_at_least(0))
        if not self.report_only and not self.backbones:
            raise PcamError("--backbones: name at least one backbone to train, e.g. "
                            "--backbones resnet50v2,densenet121 (or --report to gather runs)")
        if len(set(self.backbones)) != len(self.backbones):
            raise PcamError(f"--backbones {','.join(self.backbones)}: a backbone is named twice")
        if self.report_only and not self.name:
            raise PcamError("--report gathers the runs of a comparison: give its --name")

    @property
    def compare_dir(self) -> Path:
        return Path(self.training.runs_dir) / self.name


@dataclass(frozen=True)
class TuneSettings:
    """A search over training settings with Optuna (pcam.train.tune): each trial an ordinary run.

    ``training``: every trial's run, the fields the space names replaced.
    """

    study: str = _opt("", "study name: its trials, storage and report go to RUNS_DIR/NAME/")
    trials: int = _opt(20, "trials the study should have finished (completed or pruned); "
                           "run the command again to continue it to this number")
    timeout: float = _opt(0.0, "stop starting trials after this many minutes (0: no limit)")
    space: str = _opt("", "TOML file of the search space, a table per settings field "
                          "(low/high[/log] or choices); default: pcam's histology space "
                          "(learning rate, batch size, dropout, label smoothing, colour and "
                          "stain jitter)")
    folds_per_trial: int = _opt(1, "folds each trial trains (folds 0..N-1 of --folds); its "
                                   "value is their mean validation metric")
    storage: str = _opt("", "Optuna storage URL shared by the processes of the study, e.g. "
                            "postgresql://user@host/db (default: a SQLite file in "
                            "RUNS_DIR/NAME/, which processes on one machine share)")
    pruner: str = _opt("median", "stop a trial early when its validation metric is below the "
                                 "median of earlier trials at the same epoch (none: never)",
                       choices=("median", "none"))
    sampler_seed: int = _opt(0, "seed of the TPE sampler")
    confirm: int = _opt(0, "then train the best trial's settings and the default ones on this "
                           "many more folds, which no trial saw, and say whether the best beats "
                           "the default beyond the fold-to-fold spread")
    training: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self):
        from pcam.errors import PcamError

        _check(self, trials=_at_least(1), timeout=_non_negative_number(),
               folds_per_trial=_at_least(1), confirm=_at_least(0))
        if not self.study:
            raise PcamError("--study: name the study, e.g. --study oral-lr (its trials go to "
                            "RUNS_DIR/NAME/)")
        if self.folds_per_trial + self.confirm > self.training.folds.folds:
            raise PcamError(f"--folds-per-trial {self.folds_per_trial} and --confirm "
                            f"{self.confirm}: together at most --folds "
                            f"({self.training.folds.folds}); the confirmation uses folds "
                            "no trial saw")

    @property
    def study_dir(self) -> Path:
        return Path(self.training.runs_dir) / self.study


def changed_on_resume(now: RunSettings, then: dict) -> list[str]:
    """The settings (``section.key``) in which ``now`` differs from a started
    run's saved ``then`` in what is trained: every field but those declared
    ``resumable`` (the run's name and place, its data's place, devices).

    A setting missing from ``then`` is newer than the run (e.g.
    ``train.oof_tta``) and is not compared: no value given now could match
    it, and refusing would strand every run started by an older pcam.
    """
    may_change = {f.name for f in dataclasses.fields(RunSettings) if f.metadata.get("resumable")}
    now = to_dict(now)
    return [f"{section}.{key}" for section in now if section not in may_change
            for key in now[section] if key in then.get(section, {})
            and now[section][key] != then[section][key]]
