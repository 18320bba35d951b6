"""Training: optimizers and learning-rate schedules as IR update graphs."""
