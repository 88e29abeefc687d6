"""Models that leave pcam: a run's fold ensemble, TTA and temperature as one graph.

``graph`` builds the graph (uint8 tiles in, calibrated class probabilities
out) from the same pieces prediction uses; ``package`` writes it as a
SavedModel, a TFLite flatbuffer or a Keras file, with ``model.json`` and
``MODEL_CARD.md`` beside it, atomically. May import the ground modules,
``pcam.data`` (the dihedral views, the centre crop), ``pcam.models`` and
``pcam.predict``; nothing imports it but the commands.
"""
