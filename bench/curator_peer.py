"""The curator side of `persd bench teacher --peer curator`, run by the peer's own virtualenv.

Imports nothing from persd (persd is not installed there): reads one JSON job from argv[1] (or @FILE)
(base_url, model, prompts, rpm, tpm, max_tokens, max_concurrent, cache_dir), sends every
prompt through bespokelabs-curator's OpenAI online processor, and prints one JSON line:
{"wall_s", "answered", "failed"}. The offline settings (local cost map, tiktoken's
cl100k_base from litellm's copy, no telemetry, no viewer) are made by the caller's environment.
"""
from __future__ import annotations

import json
import logging
import sys
import time


def main() -> int:
    arg = sys.argv[1]
    job = json.loads(open(arg[1:]).read() if arg.startswith("@") else arg)
    logging.disable(logging.WARNING)  # curator logs every retry; the bench reads the server's log
    from bespokelabs import curator
    from datasets import Dataset

    params = {"base_url": job["base_url"], "max_requests_per_minute": int(job["rpm"]),
              "max_retries": int(job.get("max_retries", 20)), "request_timeout": 60,
              "require_all_responses": False}
    if job.get("tpm"):
        params["max_tokens_per_minute"] = int(job["tpm"])
    if job.get("max_concurrent"):
        params["max_concurrent_requests"] = int(job["max_concurrent"])
    class Ask(curator.LLM):
        def prompt(self, row: dict) -> str:
            return row["prompt"]

    llm = Ask(model_name=job["model"], backend="openai", backend_params=params,
                      generation_params={"max_tokens": int(job["max_tokens"])})
    data = Dataset.from_dict({"prompt": job["prompts"]})
    t0 = time.monotonic()
    out = llm(data, working_dir=job["cache_dir"])
    wall = time.monotonic() - t0
    rows = out.dataset if hasattr(out, "dataset") else out
    answered = sum(1 for r in rows if r.get("response"))
    print(json.dumps({"wall_s": wall, "answered": answered, "failed": len(job["prompts"]) - answered}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
