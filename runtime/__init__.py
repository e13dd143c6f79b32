"""What the engine drives: the sandbox, the student backends, the teacher client.

Each lives behind a small async interface and knows nothing of the pipeline.
"""
