"""Data: from a source on disk to batches of tiles.

Owns the sources (class folders, the competition's layout and its facts in
``competition``, whole-slide images in ``slides``), decoding and tiling images,
the tile store, folds, the tf.data pipeline and its augmentation ops. May import the ground modules
(``pcam.settings``, ``errors``, ``io``, ``locks``, ``places``, ``runs``, ``task``)
and nothing else of pcam: models, training, prediction and reports read
data, never the reverse. The competition's facts live here, not in
``pcam.kaggle``, because the sources read them; ``pcam.kaggle`` (the API, the
submission) sits above.
"""
