"""Preference distillation: losses, teacher signals (online or cached top-k), generation, training."""
