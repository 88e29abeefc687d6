#!/usr/bin/env python3
"""Check a submission, then submit it to Kaggle: see pcam/commands/submit.py."""
from pcam.commands.submit import main

if __name__ == "__main__":
    main()
