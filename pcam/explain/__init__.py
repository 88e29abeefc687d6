"""Explanations: Grad-CAM pages of images, heat maps of large images, whole slides.

May import everything below it: the ground modules, ``pcam.data``,
``pcam.models`` (Grad-CAM itself), ``pcam.predict`` (tiles of large images,
ensembles) and ``pcam.report`` (figures and pages).
"""
