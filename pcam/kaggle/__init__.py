"""The Kaggle competition: the API client (download, submit).

May import the ground modules and ``pcam.data`` (a download ends in a store);
the competition's file layout itself is a source, ``pcam.data.competition``.
"""
