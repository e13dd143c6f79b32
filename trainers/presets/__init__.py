"""Shipped training presets (package data): JSON objects of TrainConfig fields."""
