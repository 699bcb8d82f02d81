"""Evaluation: probes, fine-tuning, benchmark readers, reports (issue 9)."""
