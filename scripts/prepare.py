#!/usr/bin/env python3
"""Check the competition's files and build the tile stores: see pcam/commands/prepare.py."""
from pcam.commands.prepare import main

if __name__ == "__main__":
    main()
