"""DeepSpeed ZeRO fine-tuning of a causal LM on collected shards."""
