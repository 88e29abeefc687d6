#!/usr/bin/env python3
"""Whole slides through a run's model: see pcam/commands/slide.py."""
from pcam.commands.slide import main

if __name__ == "__main__":
    main()
