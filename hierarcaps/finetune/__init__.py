"""Radial Embedding (RE) and entailment-cone fine-tuning of the text side of a model."""
