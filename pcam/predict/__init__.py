"""Prediction: a run's fold models x test-time augmentation -> probabilities.

Owns TTA, ensembles of folds and of runs, their out-of-fold predictions and
threshold, images of any size as tiles, the CSVs of class probabilities and
the Kaggle submission file. May import the ground modules, ``pcam.data`` and
``pcam.models``; never training or reports: a scored prediction returns what
it wrote and the command reports it (``pcam.report.evaluate.report_labelled``).
"""
