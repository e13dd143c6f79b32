"""Shipped DeepSpeed configs (package data): zero2.json, zero3.json, zero3-offload.json.

Values written "auto" are filled by persd from the training config (batch sizes,
precision, clipping) so one file serves every model size and GPU count.
"""
