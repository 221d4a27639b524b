"""Configuration and recipes, run folders, fit, distribution, callbacks and plots."""
