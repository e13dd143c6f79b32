"""Paper mode: the PersDistill reference implementation's protocol, point by point.

Selected by `--preset paper` (collect, loop) and `--protocol paper-*` (eval); persd's own
defaults never import from here. Each module names the reference lines it follows
(paths relative to the PersDistill release, commit 521ebff); docs/fidelity.md lists them all.

- prompts.py   what the student and the teacher see (templates shipped in templates/, Apache 2.0)
- cleaning.py  how a completion or a teacher answer becomes the code that is run and trained on
- checker.py   the test program run in persd's sandbox per test, and the reference's error text
- formats.py   the training records (persd, persd-refine, refine-gold, inpd, stand; paper-combined is a
               selection), in the released files' layouts
- unittests.py `--tests-from FILE`: the release's Code-Alpaca unit tests
- flow.py      the per-task flow of `collect` in paper mode

The software defaults the reference ran with are reproduced elsewhere: decoding's clean-up in
runtime/decoding.py, sampling's top_k in the student backends, the Trainer's steps and DeepSpeed's
WarmupLR in trainers/reference.py.
"""
