"""Pretraining: optimiser, mesh, train step, checkpoints, evaluation."""
