"""Evaluation: benchmarks, generation + grading, and honest statistics."""
