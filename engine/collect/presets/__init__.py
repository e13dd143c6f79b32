"""Shipped `persd collect --preset` files (TOML, the format of --config)."""
