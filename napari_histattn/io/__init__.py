"""Slide input/output: opening slides, lazy pyramid levels, coordinate frames, synthetic slides.

GUI-free: imports no Qt, napari or torch.
"""
