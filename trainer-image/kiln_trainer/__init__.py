"""Kiln's trainer: one TrainingJob spec in, artifacts + model card out, one JSON summary line."""

__version__ = "0.1.0"
