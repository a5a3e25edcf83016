"""Datasets: registry of the five datasets, list files, images, synthetic data, preparation."""
