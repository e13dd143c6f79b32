"""persd: personalised distillation for code LLMs.

Installed, the repository's top-level folders are this package's subpackages: `persd.engine`
(the pipeline and the command line), `persd.runtime` (student backends, teacher client, sandbox),
`persd.trainers` (DeepSpeed ZeRO fine-tuning) and `persd.bench` (benchmarks).
"""
__version__ = "0.1.0"
