"""Training: the two-phase k-fold run, its checkpoints, devices, and comparisons.

Owns ``run_cv`` (folds as independent ``run_fold`` calls, resume), its
checkpoints and callbacks, the distribution strategy, the checks run before
TensorFlow loads (``preflight``), the training of a comparison of
backbones (``compare``) and a search over settings with Optuna (``tune``,
its space in ``tune_space``). May import the ground modules, ``pcam.data``,
``pcam.models`` and ``pcam.predict`` (out-of-fold predictions with TTA).
Training writes a run and never imports ``pcam.report``: the commands write
the report once training returns.
"""
