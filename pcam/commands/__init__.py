"""The command-line commands: argparse groups that mirror the settings
dataclasses, then one library call. ``scripts/*.py`` and the console entry
points (setup.cfg) both call these ``main`` functions."""
