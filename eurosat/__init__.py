"""Shared course code for the EuroSAT running example: data, model and training-loop pieces."""
