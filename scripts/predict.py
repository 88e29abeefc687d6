#!/usr/bin/env python3
"""Predict the test set with a run's folds x TTA into a submission: see pcam/commands/predict.py."""
from pcam.commands.predict import main

if __name__ == "__main__":
    main()
