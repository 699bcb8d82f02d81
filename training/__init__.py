"""Training: MultiMAE and SoftCon pretraining on Ray Train (issues 7, 8)."""
