"""The `hf` student on one device: persd's dynamic batching against plain `model.generate`, same prompts.

For each batch size B: 2B prompts, greedy, `max_tokens` new tokens each. Plain: `generate` on
batches of B left-padded prompts, one after the other. persd: 2B concurrent requests to the hf backend
with `max_batch_size` B (the backend batches them itself). tokens/s counts generated tokens.

    python -m persd.bench.gpu.student_gpu --model DIR --batch-sizes 1,8,32 --max-tokens 64 --out FILE.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

PROMPTS = [f"def function_{i}(values):\n    \"\"\"Return the sum of the first {i + 1} values squared.\"\"\"\n"
           for i in range(256)]


def plain_generate(model, tokenizer, prompts: list[str], batch: int, max_tokens: int, device: str) -> tuple[int, float]:
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokens = 0
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        enc = tokenizer(prompts[i:i + batch], return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        tokens += int((new != tokenizer.pad_token_id).sum())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - t0


async def persd_generate(model_dir: str, prompts: list[str], batch: int, max_tokens: int, device: str,
                         dtype: str) -> tuple[int, float]:
    from persd.runtime.student import StudentConfig, create_student
    from persd.runtime.student.base import SamplingParams, StudentRequest

    cfg = StudentConfig(backend="hf", model=model_dir, device=device, dtype=dtype, max_batch_size=batch,
                        max_concurrency=len(prompts))
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    async with create_student(cfg) as student:
        await student.generate(StudentRequest(prompt=prompts[0], params=params))  # warm-up
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(student.generate(StudentRequest(prompt=p, params=params)) for p in prompts))
        return sum(o.completion_tokens for o in outs), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m persd.bench.gpu.student_gpu")
    p.add_argument("--model", required=True)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, dtype)).to(device).eval()
    rows = []
    for b in (int(x) for x in args.batch_sizes.split(",")):
        prompts = PROMPTS[: 2 * b]
        plain_generate(model, tokenizer, prompts[:b], b, 4, device)  # warm-up
        pt, ps = plain_generate(model, tokenizer, prompts, b, args.max_tokens, device)
        qt, qs = asyncio.run(persd_generate(args.model, prompts, b, args.max_tokens, device, dtype))
        rows.append({"batch_size": b, "requests": len(prompts), "plain_tokens": pt, "plain_s": ps,
                     "plain_tokens_per_s": pt / ps, "persd_tokens": qt, "persd_s": qs, "persd_tokens_per_s": qt / qs,
                     "ratio": (qt / qs) / (pt / ps) if pt else None})
        print(f"batch {b}: plain generate {pt / ps:,.0f} tok/s, persd hf backend {qt / qs:,.0f} tok/s")
    Path(args.out).write_text(json.dumps({"device": device, "dtype": dtype, "max_tokens": args.max_tokens,
                                          "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
