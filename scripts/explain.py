#!/usr/bin/env python3
"""Grad-CAM pictures of tiles by id or by file: see pcam/commands/explain.py."""
from pcam.commands.explain import main

if __name__ == "__main__":
    main()
