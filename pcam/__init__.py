"""pcam: train, predict and explain histopathology tile classifiers (Kaggle PCam).

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
