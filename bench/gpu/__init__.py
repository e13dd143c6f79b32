"""The GPU acceptance run: what persd does on a real GPU, prepared here, run there as one command.

    make gpu-prepare                      # here: wheels the GPU machine lacks + the training data, in .gpu/
    bash bench/gpu/run.sh                 # there (carry .gpu): install into /tmp/site, run, write $OUT
    python -m persd.bench.gpu.acceptance --dry-run --out DIR    # here, on the CPU: the same script, tiny
"""
