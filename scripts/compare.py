#!/usr/bin/env python3
"""Compare backbones on the same folds: see pcam/commands/compare.py."""
from pcam.commands.compare import main

if __name__ == "__main__":
    main()
