#!/usr/bin/env python3
"""Download the competition's data through the Kaggle API: see pcam/commands/download.py."""
from pcam.commands.download import main

if __name__ == "__main__":
    main()
