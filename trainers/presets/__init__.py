"""Shipped training presets (package data): NAME.toml, the format of `persd train --config`."""
