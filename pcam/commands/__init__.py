"""The command-line commands: argparse groups that mirror the settings
dataclasses, then the library calls. ``scripts/*.py`` and the console entry
points (setup.cfg) both call these ``main`` functions.

The top floor: a command may import any part of the library, and is where
work that spans floors is put together (``train`` trains, then writes the
report; ``predict`` predicts, then reports scored images; ``demo`` runs the
whole job). The library never imports a command, except ``cli`` (the options
built from the settings), which the app shares.
"""
