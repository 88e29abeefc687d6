#!/usr/bin/env python3
"""Search over training settings with Optuna: see pcam/commands/tune.py."""
from pcam.commands.tune import main

if __name__ == "__main__":
    main()
