"""Datasets, training loop, evaluation metrics, k-fold cross-validation and plots."""
