#!/usr/bin/env python3
"""Train a k-fold, two-phase classifier: see pcam/commands/train.py."""
from pcam.commands.train import main

if __name__ == "__main__":
    main()
