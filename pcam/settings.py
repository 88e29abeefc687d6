"""Settings as frozen dataclasses whose defaults are the recommended recipe.

Every field carries its command-line help in ``metadata["help"]``, so the
scripts build their argparse groups from these classes (``pcam.commands.cli``) and
the library only ever receives settings objects, never a Namespace. The
resolved settings are written beside everything a run produces
(``to_json``) and read back with ``from_json``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The (de)serialisers are re-exported: callers import them from here, with the classes.
from pcam.options import (at_least, changed_on_resume, check, fraction, from_dict,  # noqa: F401
                          from_json, non_negative_number, opt, positive_number, section, to_dict,
                          to_json)


@dataclass(frozen=True)
class DataSettings:
    """Where the images are and how they become a tile store.

    Two kinds of source: the Kaggle competition's layout, or class folders.
    ``classes``, ``positive`` and ``tile_size`` may be left empty: the run
    fills them in from what the source holds, and saves them resolved in its
    ``config.json``.
    """

    data_dir: str = opt(
        "data/histopathologic-cancer-detection",
        "the images: a Kaggle competition folder (train/, test/, train_labels.csv, "
        "sample_submission.csv) or class folders (DIR/<class>/<image>, or DIR/train/<class>/... "
        "with an optional DIR/test/)")
    source: str = opt("auto", "what --data-dir holds: auto (recognise it), kaggle, or folders",
                      choices=("auto", "kaggle", "folders"))
    classes: tuple = opt(
        (), "class folders to use, comma-separated, in label order (default: every folder, "
            "sorted by name); naming fewer selects a subset")
    positive: str = opt(
        "", "with two classes, the one whose probability is reported (class 1), e.g. "
            "malignant (default: the second in order; PCam: tumour)")
    tile_size: int = opt(
        0, "side of the square tiles the store holds (default: the images' own size when "
           "they all share one square size; otherwise required: images are centre-cropped "
           "to a square and resized)")
    max_tile_size: int = opt(
        0, "with --tile-size 0, images larger than this are resized down to it (0: no "
           "limit; 128 px tiles hold 3x fewer pixels than 224 px images for a CPU to learn "
           "from)")
    store_dir: str = opt(
        "", "where the tile store lives (default: stores/NAME-HASH in the working folder, "
            "never inside the images; a store an earlier pcam made in DIR/store is used "
            "where it is)")
    mpp: float = opt(
        0.0, "microns per pixel of the images, if known (a Kaggle layout: PCam's 0.972); "
             "kept in the run's model.json so that scripts/slide.py reads slides at the "
             "same scale (0: unknown)")
    skip_bad: bool = opt(
        False, "leave unreadable or malformed tiles out (their list is written "
               "beside the store) instead of stopping")
    workers: int = opt(0, "processes that decode tiles (0: one per core)")
    # 2,048 tiles = 57 MB. The shard is the unit of work of the ingest's
    # processes and of a multi-worker split: 20,000 tiles in 4,096-tile shards
    # made 5 jobs for 2 processes, one of them doing 3 (ingest at 1.28x a
    # one-process tifffile loop, against 1.6-2.2x with 2,048 or 1,024).
    shard_tiles: int = opt(
        2048, "tiles per TFRecord shard (2048 tiles = 57 MB; 108 shards for the "
              "competition's train set, enough to split over many workers)")

    def __post_init__(self):
        check(self, workers=at_least(0), shard_tiles=at_least(1), tile_size=at_least(0),
              max_tile_size=at_least(0), mpp=non_negative_number())

    @property
    def store_path(self) -> Path:
        from pcam.places import default_store

        return (Path(self.store_dir) if self.store_dir
                else default_store(self.data_dir, self.tile_size, self.max_tile_size))


@dataclass(frozen=True)
class FoldSettings:
    """How train tiles are split into folds and how classes are balanced."""

    folds: int = opt(5, "number of cross-validation folds (at least 2)")
    groups: str = opt(
        "", "CSV mapping id -> slide (e.g. PCam's public patch_id_wsi_full.csv); keeps one slide's "
            "tiles in one fold (StratifiedGroupKFold)")
    group_pattern: str = opt(
        "", "regular expression whose first group, found in each image's file name, is its "
            "patient or slide, e.g. 'CRC-Prim-HE-(\\d+)'; keeps each group in one fold")
    balance: str = opt(
        "weights", "class balance: weights (loss weights from label counts) or "
                   "resample (draw classes equally)", choices=("weights", "resample"))
    max_tiles: int = opt(0, "use a stratified subset of this many train tiles (0: all)")
    seed: int = opt(0, "seed for folds, shuffling and augmentation")

    def __post_init__(self):
        # --folds is checked against the tiles by pcam.data.folds, which knows the class counts.
        check(self, max_tiles=at_least(0), seed=at_least(0))


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

    dihedral: bool = opt(True, "random flips and 90-degree rotations (PCam labels do not "
                               "depend on orientation)")
    brightness: float = opt(0.1, "max brightness shift, fraction of 255 (0: off)")
    contrast: float = opt(0.2, "max contrast change, fraction (0: off)")
    saturation: float = opt(0.2, "max saturation change, fraction (0: off)")
    hue: float = opt(0.04, "max hue shift, fraction of the colour wheel (0: off)")
    stain: float = opt(0.05, "H&E stain jitter strength: each stain's optical density "
                             "scaled by U(1-s, 1+s) and shifted by U(-s, s) (0: off)")
    zoom: float = opt(0.0, "max random zoom-in, fraction of the tile (e.g. 0.15)")
    centre_crop: int = opt(0, "keep only the centre NxN pixels (0: whole tile; the label "
                              "is about the centre 32x32)")

    def __post_init__(self):
        check(self, brightness=non_negative_number(), contrast=fraction(),
              saturation=fraction(), hue=fraction(), stain=non_negative_number(),
              zoom=fraction(),
              # At most the tile size: checked against the store (training.run_cv).
              centre_crop=at_least(0))


@dataclass(frozen=True)
class InputSettings:
    """How batches are fed."""

    batch_size: int = opt(128, "tiles per batch (per replica when several devices)")
    cache: str = opt("auto", "keep the whole store in RAM as one uint8 array for training and "
                             "validation: auto (when it fits in half the free memory), yes, no "
                             "(stream it from disk)", choices=("auto", "yes", "no"))
    # 8,192 tiles = 226 MB of RAM. Only when streaming: in RAM every epoch is a
    # full shuffle. Store order is already random for Kaggle's hashed ids.
    shuffle_buffer: int = opt(8192, "tiles in the shuffle buffer when the store is streamed "
                                    "from disk (in RAM, every epoch is a full shuffle)")

    def __post_init__(self):
        check(self, batch_size=at_least(1), shuffle_buffer=at_least(1))


@dataclass(frozen=True)
class ModelSettings:
    """Which network: a backbone from the registry and its head."""

    backbone: str = opt("resnet50", "backbone from the registry (a wrong name lists them): "
                                    "resnet50, resnet50v2, densenet121, efficientnetv2b0, "
                                    "efficientnetv2s, convnext-tiny, simple-cnn, cpu-cnn, "
                                    "coatnet-0 (the last three have no ImageNet weights: "
                                    "trained from scratch)")
    image_size: int = opt(0, "input size the backbone sees; tiles are resized to it inside "
                             "the model (0: with ImageNet weights, the tiles fed upsampled 2x "
                             "up to the backbone's native size, e.g. PCam's 96 px to 192; "
                             "from random weights, the size of the tiles fed)")
    weights: str = opt("imagenet", "initial backbone weights: imagenet, none, pcam (cpu-cnn "
                                   "trained on PCam, shipped with pcam: a histology start "
                                   "without a download), a weights "
                                   "file, or a pcam model of the same backbone (a run's "
                                   "fold_K/best.keras: its backbone is copied, e.g. cpu-cnn "
                                   "trained on PCam); simple-cnn, cpu-cnn and coatnet-0 have "
                                   "no ImageNet weights in Keras, so for them imagenet means "
                                   "none (random)")
    dense_units: int = opt(256, "units of the head's hidden Dense layer")
    dropout: float = opt(0.5, "dropout before the output unit")

    def __post_init__(self):
        # The backbone's own smallest size is checked by pcam.models.registry, which knows it.
        check(self, image_size=at_least(0), dense_units=at_least(1), dropout=fraction())


@dataclass(frozen=True)
class TrainSettings:
    """The two phases: head only on a frozen backbone, then fine-tuning.

    The defaults are the recommended GPU recipe for ResNet50 on the
    competition's data (see README for what it reaches).
    """

    epochs_frozen: int = opt(2, "epochs of phase 1 (backbone frozen, head trained)")
    epochs_finetune: int = opt(10, "epochs of phase 2 (backbone unfrozen)")
    lr_frozen: float = opt(1e-3, "Adam learning rate of phase 1")
    lr_finetune: float = opt(1e-4, "peak learning rate of phase 2 (cosine decay to 0)")
    unfreeze: int = opt(0, "phase 2 unfreezes the top N backbone blocks, stem included "
                           "(ResNet50 has 17: 3 is stage conv5; 0: all)")
    schedule: str = opt("cosine", "phase 2 learning rate: cosine decay, or plateau "
                                  "(halve when validation AUC stalls)",
                        choices=("cosine", "plateau"))
    patience: int = opt(3, "epochs without validation AUC gain before early stopping "
                           "(with the cosine schedule, counted in the phase's second half)")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing (e.g. 0.05)")
    tensorboard: bool = opt(False, "write TensorBoard logs in the fold's folder")
    ema: bool = opt(False, "keep an exponential moving average of the weights (Keras' "
                           "use_ema): validation, the best-epoch choice and best.keras use "
                           "the averaged weights")
    ema_momentum: float = opt(0.99, "with --ema, the average's momentum per training step "
                                    "(0.99: the last ~100 steps weigh most)")
    oof_tta: int = opt(8, "dihedral views averaged in each fold's out-of-fold predictions, "
                          "from which the cross-validated figures and the threshold come "
                          "(8, as predict.py's default: they describe the model as it will "
                          "be used)", choices=(1, 2, 4, 8))

    def __post_init__(self):
        from pcam.errors import PcamError

        check(self, epochs_frozen=at_least(0), epochs_finetune=at_least(0),
              lr_frozen=positive_number(), lr_finetune=positive_number(),
              unfreeze=at_least(0), patience=at_least(0), label_smoothing=fraction(),
              ema_momentum=fraction())
        if self.epochs_frozen + self.epochs_finetune == 0:
            # Nothing would be trained, and the folds would be marked finished.
            raise PcamError("--epochs-frozen 0 --epochs-finetune 0: nothing to train; give "
                            "at least one phase an epoch")


@dataclass(frozen=True)
class DeviceSettings:
    """Where and how the arithmetic runs."""

    strategy: str = opt("auto", "auto (TPU, else all GPUs, else CPU), cpu, mirrored, "
                                "multiworker (TF_CONFIG), tpu",
                        choices=("auto", "cpu", "mirrored", "multiworker", "tpu"))
    precision: str = opt("float32", "float32, mixed_float16 (GPUs) or mixed_bfloat16 "
                                    "(TPUs, recent CPUs); the output stays float32",
                         choices=("float32", "mixed_float16", "mixed_bfloat16"))
    jit: bool = opt(False, "compile the training step with XLA")
    steps_per_execution: int = opt(1, "batches per call into the device (raise on TPUs)")
    deterministic: bool = opt(False, "deterministic ops (slower; same seed, same weights)")

    def __post_init__(self):
        check(self, steps_per_execution=at_least(1))


@dataclass(frozen=True)
class RunSettings:
    """Everything one training run needs; saved as ``config.json`` in the run."""

    recipe: str = opt("auto", "the defaults to train with: gpu (ResNet50 from ImageNet "
                              "weights, the settings below), cpu (cpu-cnn: from the shipped "
                              "PCam backbone for class folders, 128 px, 60 epochs, batch 16, "
                              "no colour jitter; from scratch, 30 epochs for the competition), "
                              "or auto (gpu when a GPU or TPU is found, else cpu); options "
                              "given on the command line always win",
                      choices=("auto", "gpu", "cpu"), resumable=True)
    run: str = opt("", "run name: results go to RUNS_DIR/RUN (default: the data folder's "
                       "name and a hash of the settings, so the same command again resumes "
                       "the same run; RUNS_DIR/latest names the last run)", resumable=True)
    runs_dir: str = opt("runs", "folder that holds the runs", resumable=True)
    fold: int = opt(-1, "train only this fold (to spread folds over machines; -1: all)",
                    resumable=True)
    report: bool = opt(True, "write the evaluation report (RUN/report/index.html, see "
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
        check(self, fold=at_least(-1))

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run


@dataclass(frozen=True)
class PredictSettings:
    """How a run's fold models predict the test set (defaults: the recommended ensemble).

    Every finished fold, all 8 dihedral views, probabilities averaged.
    """

    run: tuple = opt((), "the run folder(s) to predict with, as scripts/train.py wrote them "
                         "(runs/NAME); several runs (--run A --run B, or --run A B) are "
                         "ensembled: each run's folds are combined, then the runs, each "
                         "run counting equally")
    folds: tuple = opt((), "fold numbers to ensemble, the same for every run; empty: every "
                           "finished fold")
    tta: int = opt(8, "test-time augmentation: dihedral views per tile (1: none; 2: + a "
                      "left-right flip; 4: + the up-down flip and the 180-degree rotation; "
                      "8: all flips and rotations)", choices=(1, 2, 4, 8))
    average: str = opt("mean", "how the folds' (and the runs') predictions are combined: "
                               "mean of probabilities, or rank (mean of rank-normalised "
                               "predictions; fine for AUC)", choices=("mean", "rank"))
    calibration: str = opt("temperature", "temperature: each run's probabilities at the "
                                          "temperature fitted on its out-of-fold predictions "
                                          "(none before every fold has finished); none: the "
                                          "models' own", choices=("temperature", "none"))
    batch_size: int = opt(0, "images per model call, tiles x TTA views (0: twice the run's "
                             "training batch; prediction keeps no activations for "
                             "gradients, so that fits wherever training fitted)")
    data_dir: str = opt("", "competition folder (default: the run's, from its config.json)")
    store_dir: str = opt("", "tile store folder (default: the run's; with --data-dir, "
                             "that folder's own, under stores/)")
    out: str = opt("", "CSV to write (default: submissions/RUN.csv for a Kaggle run, "
                       "predictions/RUN-WHAT.csv for images, WHAT naming the folder or "
                       "file predicted, so that other images never overwrite it; its "
                       "settings go beside it as .json)")
    answers: str = opt("", "the answers, to score the predictions: a CSV of id,label for "
                           "a Kaggle test set (prints the AUC), or a labelled class-folder "
                           "set DIR/<class>/<image> (predicts its images, writes the report)")
    images: tuple = opt((), "image files or folders to predict instead of the test set (any "
                            "size: made into tiles as the run's store made them); writes a CSV "
                            "of path, predicted class and one probability per class")

    def __post_init__(self):
        from pcam.errors import PcamError

        if isinstance(self.run, (str, Path)):  # one run, as Python callers name it
            object.__setattr__(self, "run", (str(self.run),) if str(self.run) else ())
        object.__setattr__(self, "run", tuple(str(r) for r in self.run))
        check(self, batch_size=at_least(0),
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

    run: str = opt("", "the run to report on (runs/NAME): its out-of-fold predictions, "
                       "per fold and pooled, and its training curves")
    submission: str = opt("", "a submission CSV to report on instead, with --answers "
                              "(the threshold then comes from its run's OOF predictions)")
    answers: str = opt("", "CSV of id,label for the submission's tiles")
    target_sensitivity: float = opt(
        0.0, "choose the threshold with at least this sensitivity on the OOF predictions, "
             "e.g. 0.95 (default 0: maximise Youden's J = sensitivity + specificity - 1)")
    bootstrap: int = opt(1000, "bootstrap resamples for the 95%% AUC intervals")
    gallery: int = opt(12, "tiles in each gallery of the most confident false positives "
                           "and false negatives (0: no galleries)")
    out: str = opt("", "report folder (default: RUN/report, or the submission's name "
                       "+ '-report' beside it)")

    def __post_init__(self):
        check(self, target_sensitivity=fraction(), bootstrap=at_least(0),
              gallery=at_least(0))


@dataclass(frozen=True)
class ExplainSettings:
    """Which tiles Grad-CAM explains, with which model, and where the pictures go."""

    run: str = opt("", "the run whose model explains (runs/NAME)")
    model: str = opt("", "a .keras model file to explain with instead of a run's fold "
                         "(any pcam model, or a Keras CNN ending in one sigmoid unit)")
    fold: int = opt(-1, "the run's fold whose best model explains (-1: the first finished "
                        "fold)")
    ids: tuple = opt((), "tile ids to explain, looked up in the tile stores (train, then test)")
    images: tuple = opt((), "image files or folders to explain (TIFF, PNG, JPEG: made "
                            "into tiles as the run's store made them)")
    target: str = opt("", "whose evidence the heat map shows: a class name of the run, or "
                          "predicted (each tile's own answer); default: the positive class "
                          "of a two-class run, else predicted")
    data_dir: str = opt("", "competition folder whose stores hold the ids (default: the "
                            "run's)")
    store_dir: str = opt("", "tile store folder (default: the run's; with --data-dir, that "
                             "folder's own, under stores/)")
    out: str = opt("", "folder for the pictures (default: RUN/explain/fold_K, or explain/ "
                       "beside --model)")

    def __post_init__(self):
        check(self, fold=at_least(-1))


@dataclass(frozen=True)
class HeatmapSettings:
    """Which run maps which images, and how densely (see pcam/explain/heatmap.py)."""

    run: str = opt("", "the run folder whose model(s) map the images (runs/NAME)")
    folds: tuple = opt((), "fold numbers to ensemble; empty: every finished fold")
    images: tuple = opt((), "image files or folders of images larger than the run's tile "
                            "(TIFF, PNG, JPEG)")
    stride: int = opt(0, "pixels between neighbouring windows (0: a third of the tile)")
    tta: int = opt(1, "test-time views per window (1: none; 2, 4 or 8 dihedral views)",
                   choices=(1, 2, 4, 8))
    region: int = opt(-1, "side of the centre square a window's answer is about (-1: the "
                          "run's label region, e.g. 32 for the Kaggle PCam store, else a "
                          "third of the tile; 0: the whole window)")
    batch_size: int = opt(256, "windows x views per model call")
    out: str = opt("heatmaps", "folder for IMAGE-heatmap.png and IMAGE-heatmap.csv")

    def __post_init__(self):
        check(self, stride=at_least(0), region=at_least(-1), batch_size=at_least(1),
              folds=(lambda v: all(isinstance(k, int) and k >= 0 for k in v),
                     "fold numbers, 0 or more"))


@dataclass(frozen=True)
class SlideSettings:
    """Which run reads which whole slides, at what scale, and where the answers go
    (pcam.explain.slides, pcam.commands.slide)."""

    run: str = opt("", "the run folder whose model(s) read the slides (runs/NAME)")
    folds: tuple = opt((), "fold numbers to ensemble; empty: every finished fold")
    slides: tuple = opt((), "slide files or folders of them (SVS, NDPI, MRXS, SCN, TIFF)")
    out: str = opt("slides-out", "folder for each slide's NAME.tiles.csv, .geojson, "
                                 ".heatmap.png, .mask.png, and the cohort's slides.csv and "
                                 "index.html")
    tta: int = opt(1, "test-time views per tile (1: none; 2, 4 or 8 dihedral views)",
                   choices=(1, 2, 4, 8))
    batch_size: int = opt(256, "tiles x views per model call")
    min_tissue: float = opt(0.5, "keep a tile when at least this fraction of it is tissue")
    tissue_threshold: float = opt(0.0, "saturation (0-1) above which a thumbnail pixel is "
                                       "tissue (0: Otsu's threshold on log saturation, per slide)")
    slide_mpp: float = opt(0.0, "microns per pixel of the slides' full resolution (0: "
                                "read from each slide's metadata)")
    run_mpp: float = opt(0.0, "microns per pixel of the images the run learnt from (0: its "
                              "model.json's, from train.py --mpp; PCam: 0.972)")
    shard: str = opt("", "I/N: read every N-th slide of the sorted list starting at the "
                         "I-th (0-based), for a job array writing to one --out")
    report: bool = opt(False, "read no slide: gather the finished slides in --out into "
                              "slides.csv and index.html (after --shard jobs)")
    overlay_tiff: bool = opt(False, "also write NAME.overlay.tif, a pyramidal TIFF of the "
                                    "probability map at the slide's scale, for viewers to layer")

    def __post_init__(self):
        from pcam.errors import PcamError

        check(self, batch_size=at_least(1), tissue_threshold=fraction(),
              slide_mpp=non_negative_number(), run_mpp=non_negative_number(),
              min_tissue=(lambda v: isinstance(v, (int, float)) and 0 <= v <= 1,
                          "a fraction from 0 to 1"),
              folds=(lambda v: all(isinstance(k, int) and k >= 0 for k in v),
                     "fold numbers, 0 or more"))
        if self.shard and self.shard_part is None:
            raise PcamError(f"--shard {self.shard!r}: write I/N with 0 <= I < N, e.g. "
                            "--shard 0/4 for the first of four jobs")

    @property
    def shard_part(self) -> tuple[int, int] | None:
        """(I, N) of ``--shard I/N``; (0, 1) when not sharded; None when malformed."""
        if not self.shard:
            return 0, 1
        i, _, n = self.shard.partition("/")
        if not (i.strip().isdigit() and n.strip().isdigit()):
            return None
        i, n = int(i), int(n)
        return (i, n) if 0 <= i < n else None


@dataclass(frozen=True)
class ExportSettings:
    """Which run leaves pcam, how, and where (pcam.export)."""

    run: str = opt("", "the run folder to export (runs/NAME)")
    folds: tuple = opt((), "fold numbers in the ensemble; empty: every finished fold")
    tta: int = opt(8, "dihedral views averaged inside the artifact (1: none; 8: all, as "
                      "predict.py's default)", choices=(1, 2, 4, 8))
    format: str = opt("savedmodel", "savedmodel (TensorFlow, any language with TF bindings, "
                                    "TF Serving) or tflite (phones, edge devices)",
                      choices=("savedmodel", "tflite"))
    calibration: str = opt("temperature", "temperature: the run's calibrated probabilities; "
                                          "none: the models' own",
                           choices=("temperature", "none"))
    out: str = opt("", "the export's folder, replaced when complete (default: exports/RUN-FORMAT)")

    def __post_init__(self):
        check(self, folds=(lambda v: all(isinstance(k, int) and k >= 0 for k in v),
                           "fold numbers, 0 or more"))


@dataclass(frozen=True)
class ServeSettings:
    """Which model the REST API serves, where, and how requests are batched (pcam.serve)."""

    run: str = opt("", "the run folder to serve (runs/NAME), or --model")
    model: str = opt("", "one fold's best.keras (its model.json beside it) instead of a run")
    folds: tuple = opt((), "fold numbers in the ensemble; empty: every finished fold")
    tta: int = opt(1, "dihedral views per tile (1: none; 8: as predict.py's default, at 8x "
                      "the model's time)", choices=(1, 2, 4, 8))
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every network interface)")
    port: int = opt(8000, "port to listen on")
    batching: bool = opt(True, "gather concurrent requests' tiles into one model call")
    max_batch: int = opt(64, "tiles gathered into one model call")
    max_wait_ms: float = opt(0.0, "how long a model call waits for more requests (ms; 0: it "
                                  "takes those that came while the last call ran)")
    max_body_mb: float = opt(50.0, "the largest request accepted (MB); larger ones get 413")

    def __post_init__(self):
        check(self, port=at_least(0), max_batch=at_least(1),
              max_wait_ms=non_negative_number(), max_body_mb=positive_number(),
              folds=(lambda v: all(isinstance(k, int) and k >= 0 for k in v),
                     "fold numbers, 0 or more"))


@dataclass(frozen=True)
class CompareSettings:
    """Which backbones are compared, on the same folds, and where (pcam.train.compare, pcam.report.compare).

    ``training`` is the template of every backbone's run: all the training
    options, the backbone replaced by each of ``backbones``.
    """

    backbones: tuple = opt((), "backbones to compare, comma-separated, e.g. "
                               "resnet50v2,densenet121,simple-cnn (a wrong name lists them)")
    name: str = opt("", "comparison name: its runs go to RUNS_DIR/NAME/<backbone>/ and its "
                        "report to RUNS_DIR/NAME/report/ (default: a timestamp)")
    report_only: bool = opt(False, "train nothing: gather the runs under RUNS_DIR/NAME into "
                                   "its report (after --backbones X on several machines)")
    bootstrap: int = opt(1000, "bootstrap resamples for the AUC intervals and the paired "
                               "differences")
    speed_tiles: int = opt(256, "tiles each backbone's model predicts to measure tiles/s "
                                "(0: not measured)")
    training: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self):
        from pcam.errors import PcamError

        check(self, bootstrap=at_least(1), speed_tiles=at_least(0))
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

    study: str = opt("", "study name: its trials, storage and report go to RUNS_DIR/NAME/")
    trials: int = opt(20, "trials the study should have finished (completed or pruned); "
                          "run the command again to continue it to this number")
    timeout: float = opt(0.0, "stop starting trials after this many minutes (0: no limit)")
    space: str = opt("", "TOML file of the search space, a table per settings field "
                         "(low/high[/log] or choices); default: pcam's histology space "
                         "(learning rate, batch size, dropout, label smoothing, colour and "
                         "stain jitter)")
    folds_per_trial: int = opt(1, "folds each trial trains (folds 0..N-1 of --folds); its "
                                  "value is their mean validation metric")
    storage: str = opt("", "Optuna storage URL shared by the processes of the study, e.g. "
                           "postgresql://user@host/db (default: a SQLite file in "
                           "RUNS_DIR/NAME/, which processes on one machine share)")
    pruner: str = opt("median", "stop a trial early when its validation metric is below the "
                                "median of earlier trials at the same epoch (none: never)",
                      choices=("median", "none"))
    sampler_seed: int = opt(0, "seed of the TPE sampler")
    confirm: int = opt(0, "then train the best trial's settings and the default ones on this "
                          "many more folds, which no trial saw, and say whether the best beats "
                          "the default beyond the fold-to-fold spread")
    training: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self):
        from pcam.errors import PcamError

        check(self, trials=at_least(1), timeout=non_negative_number(),
              folds_per_trial=at_least(1), confirm=at_least(0))
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
