"""pcam: train, predict and explain histopathology tile classifiers (Kaggle PCam).

The package is built in floors; a module imports only from its own folder and
the floors below it (each subpackage's docstring says what it owns)::

    commands/, app.py     the commands and the app: parse, then call the library
    serve/                the REST API (FastAPI), requests batched
    export/               a run as one artifact: SavedModel, TFLite
    explain/              Grad-CAM pages, heat maps, whole slides
    report/               evaluation reports, figures, pages, the comparison's report
    train/                runs: phases, folds, checkpoints, devices, comparisons
    kaggle/               the competition's API and submission file
    predict/              TTA, ensembles, images of any size
    models/               backbones, create_model, Grad-CAM, saved models
    data/                 sources, images, tile stores, folds, tf.data, augmentation
    runs, settings, options, config, task, metrics, calibration, places, recipes, io, locks,
    errors, quiet
                          (the ground)

Modules import TensorFlow only where they need it, so the command-line help
and the data checks answer quickly.
"""
import os

# TensorFlow's C++ INFO and WARNING lines (oneDNN, XLA, CUDA probing) bury
# the messages users need; errors still show. A user's own setting wins (the
# commands go further: pcam.quiet).
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
