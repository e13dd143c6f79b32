"""Its older home: the scripted student server lives in persd.runtime.local_server (one module, public API).

`python -m persd.runtime.student.fake_server --port 0` still prints `READY <base url>` once it listens.
"""
from persd.runtime.local_server import FakeOpenAIServer, Reply, default_reply, main_fake_student

__all__ = ["FakeOpenAIServer", "Reply", "default_reply"]

if __name__ == "__main__":
    raise SystemExit(main_fake_student())
