"""Paper mode: the PersDistill reference implementation's protocol, point by point.

Selected by `--preset paper` (collect, loop) and `--protocol paper-*` (eval); persd's own
defaults never import from here. Each module names the reference lines it follows
(paths relative to the PersDistill release, commit 521ebff); docs/fidelity.md lists them all.

- prompts.py   what the student and the teacher see (templates shipped in templates/, Apache 2.0)
- cleaning.py  how a completion or a teacher answer becomes the code that is run and trained on
- checker.py   the test program run in persd's sandbox per test, and the reference's error text
- formats.py   the training records (persd, persd-refine, inpd, stand; persd-combined is a selection)
- flow.py      the per-task flow of `collect` in paper mode
"""
