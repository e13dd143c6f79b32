"""One module per `persd` sub-command; each exposes `main(argv) -> int`."""
