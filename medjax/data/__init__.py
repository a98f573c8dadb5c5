"""Datasets, input pipelines and medical image I/O."""
