#!/usr/bin/env python3
"""Heat maps over images larger than a tile: see pcam/commands/heatmap.py."""
from pcam.commands.heatmap import main

if __name__ == "__main__":
    main()
