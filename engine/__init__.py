"""The persd pipeline: tasks, the per-task flow, shards, resume, progress and the `persd` CLI."""
