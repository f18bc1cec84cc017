"""Attention models: registry, model families, attention layers and checkpoints.

Does not import ``napari_histattn.io``.
"""
