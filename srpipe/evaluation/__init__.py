"""Evaluation parts: scores, statistics, consistency, perceptual distances, report."""
