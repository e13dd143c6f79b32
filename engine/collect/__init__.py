"""`persd collect`: the streaming pipeline (runner, per-task flow, shards, manifest), the teacher's
lessons and test generation, the offline stand-in teacher, progress and metrics."""
