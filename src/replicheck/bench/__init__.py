"""Labelled replica benchmark: building (make), perturbations and evaluation (run)."""
