"""`persd eval --protocol NAME`: the paper's evaluation settings as config files (package data, NAME.toml).

A protocol is a TOML file of `persd eval` options, the same format as `--config`; `--protocol FILE.toml`
takes your own. The PERsD paper (Chen et al., EMNLP 2023) reports HumanEval pass@1 from n=20 samples
at temperature 0.2, pass@k from n=100 samples at temperature 0.8, and MBPP on the 307 sanitized task ids
scored with the original MBPP text and tests. Refine-inference (`--refine-steps 2`) is an extra column
for models trained on `persd-refine` records, so no protocol turns it on.
"""
