#!/usr/bin/env python3
"""Evaluate a run or a scored submission into an HTML report: see pcam/commands/evaluate.py."""
from pcam.commands.evaluate import main

if __name__ == "__main__":
    main()
