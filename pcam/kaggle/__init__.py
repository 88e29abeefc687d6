"""The Kaggle competition: the API client (``api``: credentials, download, submit) and
the submission file (``submission``: a run's ensemble on the test store, ``id,label`` in
sample_submission's order, checked).

May import the ground modules, ``pcam.data`` (a download ends in a store) and
``pcam.predict`` (the submission is a prediction); the competition's file
layout itself is a source, ``pcam.data.competition``, below all of them.
"""
