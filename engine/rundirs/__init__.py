"""Run directories: one module per kind of directory a command writes, and what they share.

    files.py     atomic_write (temp file, fsync, rename): the one way a whole file is replaced
    settings.py  the one settings check: settings changed -> refuse unless --force
    kinds.py     which command made a directory (from each kind's markers), and the `persd report` hint
    eval.py      `persd eval --out DIR`: paths, marker, manifest (work/eval.json), is_done
    train.py     `persd train --out DIR`: paths, marker, manifest (train.json), is_done
    loop.py      `persd loop --out DIR`: paths, marker, manifest (loop.json), is_done
The collect directory's owner is persd.engine.collect.layout (it needs nothing of persd, so the
trainers read shards through it). This layer sits below the pipeline: the trainers may import it.
"""
