"""Interpretation: feature statistics, concept alignment, auto-interp, steering, knowledge maps."""
