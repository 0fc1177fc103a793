"""Calibration: measure a running (model, hardware) pair and fit its MU cost profile."""
