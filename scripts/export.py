#!/usr/bin/env python3
"""A run's model out of pcam: see pcam/commands/export.py."""
from pcam.commands.export import main

if __name__ == "__main__":
    main()
