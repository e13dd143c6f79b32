"""persd train, data side: records, selection, held-out split, tokenisation, packing (no DeepSpeed here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import PERSDISTILL_FIXTURE, write_jsonl
from persd.runtime.errors import InputError, UsageError
from persd.trainers.data import load_records, split_by_task
from persd.trainers.encode import encode_records
from persd.trainers.packing import IGNORE, collate, padding_waste, plan_epoch

PAPER_FILES = ("persd.jsonl", "inpd.jsonl", "refine-gold.jsonl")


def rec(task: str, fmt: str, prompt: str = "def f(x):\n", completion: str = "    return x + 1\n") -> dict:
    return {"id": f"{task}/{fmt}", "task_id": task, "format": fmt, "prompt": prompt, "completion": completion}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_collect_dir_reads_sealed_shards_only(tmp_path):
    run = tmp_path / "collect"
    write_jsonl(run / "shards" / "shard-00000.jsonl", [rec("t1", "persd"), rec("t1", "persd-refine")])
    write_jsonl(run / "shards" / "shard-00001.jsonl", [rec("t2", "persd")])
    # outcomes and work in progress are not training data
    write_jsonl(run / "shards" / "shard-00000.results.jsonl", [{"task_id": "t1", "outcome": "refined"}])
    write_jsonl(run / "work" / "shard-00002.partial.jsonl", [rec("t3", "persd")])
    (run / "manifest.json").write_text("{}")
    records, stats = load_records([str(run)])
    assert sorted(r.id for r in records) == ["t1/persd", "t1/persd-refine", "t2/persd"]
    assert stats.files == 2


def test_formats_select_and_combined_alias(tmp_path):
    f = write_jsonl(tmp_path / "r.jsonl", [rec("a", "persd"), rec("a", "persd-refine"), rec("a", "inpd")])
    assert {r.format for r in load_records([str(f)], ["persd"])[0]} == {"persd"}
    assert {r.format for r in load_records([str(f)], ["persd-combined"])[0]} == {"persd", "persd-refine"}
    with pytest.raises(UsageError, match="no record of format stand.*present: inpd, persd, persd-refine"):
        load_records([str(f)], ["stand"])


def test_duplicate_ids_dropped_across_sources(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [rec("x", "persd"), rec("y", "persd")])
    b = write_jsonl(tmp_path / "b.jsonl", [rec("x", "persd", completion="    return 2\n")])
    records, stats = load_records([str(a), str(b)])
    assert [r.id for r in records] == ["x/persd", "y/persd"] and stats.duplicates == 1
    assert records[0].completion == "    return x + 1\n"  # first occurrence kept


def test_bad_record_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(rec("a", "persd")) + "\n" + '{"id": "b", "task_id": "b", "format": "persd"}\n')
    with pytest.raises(InputError, match=rf"{f}:2: field 'prompt': missing"):
        load_records([str(f)])
    f.write_text("{not json\n")
    with pytest.raises(InputError, match=rf"{f}:1: not valid JSON"):
        load_records([str(f)])


def test_bad_record_is_exit_2_without_traceback(tmp_path, tiny_model_dir, capsys):
    from persd.engine.cli.main import main

    f = tmp_path / "bad.jsonl"
    f.write_text('["a list"]\n')
    code = main(["train", "--data", str(f), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"{f}:1: expected a JSON object" in err and "Traceback" not in err
    assert main(["train", "--data", str(f), "--model", str(tiny_model_dir), "--out", "o", "--seq-len", "x"]) == 2
    assert "--seq-len" in capsys.readouterr().err


def test_held_out_split_is_by_task():
    from persd.trainers.data import Record

    records = [Record(f"t{i}/{fmt}", f"t{i}", fmt, "p", "c") for i in range(400) for fmt in ("persd", "persd-refine")]
    train, held = split_by_task(records, 0.1, seed=0)
    train_tasks, held_tasks = {r.task_id for r in train}, {r.task_id for r in held}
    assert not train_tasks & held_tasks
    assert 20 <= len(held_tasks) <= 60  # about 10% of 400 tasks
    assert all(sum(r.task_id == t for r in held) == 2 for t in held_tasks)  # both formats of a task together
    assert split_by_task(records, 0.1, seed=0) == (train, held)  # deterministic


def test_targets_are_completion_and_eos_only(tokenizer):
    from persd.trainers.data import Record

    r = Record("a/persd", "a", "persd", "def add(a, b):\n", "    return a + b\n")
    (ex,), _ = encode_records([r], tokenizer, seq_len=64)
    completion = tokenizer(r.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert list(ex.ids[ex.n_prompt:]) == completion
    batch = collate([[0]], [ex], seq_len=64, batching="pack", pad_id=tokenizer.pad_token_id)
    targets = batch.targets[0]
    labelled = targets[targets != IGNORE].tolist()
    assert labelled == completion  # every completion token and EOS, no prompt token
    assert (targets[: ex.n_prompt - 1] == IGNORE).all()


def test_overlong_example_keeps_completion(tokenizer):
    from persd.trainers.data import Record

    long_prompt = '"""' + " ".join(f"word{i}" for i in range(300)) + '"""\ndef f():\n'
    r = Record("a/persd", "a", "persd", long_prompt, "    return 1\n")
    (ex,), stats = encode_records([r], tokenizer, seq_len=48)
    completion = tokenizer(r.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(ex) == 48 and list(ex.ids[ex.n_prompt:]) == completion
    full_prompt = tokenizer(long_prompt)["input_ids"]
    assert list(ex.ids[: ex.n_prompt]) == full_prompt[-ex.n_prompt:]  # the prompt's end survives
    assert stats.prompt_truncated == 1 and stats.completion_truncated == 0


def test_packing_covers_every_example_once_without_splitting():
    lengths = [5, 17, 30, 64, 3, 1, 40, 22, 64, 9] * 7
    plan = plan_epoch(lengths, seq_len=64, micro_batch=3, batching="pack", seed=1, epoch=0)
    rows = [row for micro in plan for row in micro]
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert plan == plan_epoch(lengths, seq_len=64, micro_batch=3, batching="pack", seed=1, epoch=0)
    assert plan != plan_epoch(lengths, seq_len=64, micro_batch=3, batching="pack", seed=1, epoch=1)


def test_packed_rows_restart_positions_and_never_predict_across_examples(tokenizer):
    from persd.trainers.data import Record

    recs = [Record(f"t{i}/persd", f"t{i}", "persd", f"def f{i}(x):\n", f"    return x * {i}\n") for i in range(3)]
    examples, _ = encode_records(recs, tokenizer, seq_len=64)
    b = collate([[0, 1, 2]], examples, seq_len=64, batching="pack", pad_id=tokenizer.pad_token_id)
    at = 0
    for ex in examples:
        n = len(ex)
        assert b.position_ids[0, at:at + n].tolist() == list(range(n))
        assert b.targets[0, at + n - 1] == IGNORE  # an example's last token predicts nothing in the next one
        at += n
    assert b.position_ids[0, at] == 0 and (b.targets[0, at:] == IGNORE).all()  # the padding tail
    assert b.attention_mask is None and b.n_tokens == at


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_sequence_gives_the_same_logits_as_examples_alone(tiny_model_dir, tokenizer, attn):
    from persd.trainers.data import Record
    from persd.trainers.loop import forward_logits
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    recs = [Record(f"t{i}/persd", f"t{i}", "persd", p, c) for i, (p, c) in enumerate([
        ("def add(a, b):\n", "    return a + b\n"),
        ("def is_even(n):\n    '''True when n is even.'''\n", "    return n % 2 == 0\n"),
        ("def first(xs):\n", "    return xs[0] if xs else None\n")])]
    examples, _ = encode_records(recs, tokenizer, seq_len=128)
    packed = collate([[0, 1, 2]], examples, seq_len=128, batching="pack", pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        logits = forward_logits(model, packed)[0]  # exactly the training forward
        at = 0
        for ex in examples:
            alone = model(input_ids=torch.as_tensor(ex.ids, dtype=torch.long)[None]).logits[0]
            torch.testing.assert_close(logits[at:at + len(ex)], alone, atol=1e-4, rtol=1e-4)
            at += len(ex)


def test_group_and_pad_batches_use_attention_masks(tokenizer):
    from persd.trainers.data import Record

    recs = [Record(f"t{i}/persd", f"t{i}", "persd", "def f():\n", "    return 1\n" * (i + 1)) for i in range(4)]
    examples, _ = encode_records(recs, tokenizer, seq_len=64)
    lengths = [len(e) for e in examples]
    for mode in ("group", "pad"):
        plan = plan_epoch(lengths, seq_len=64, micro_batch=2, batching=mode, seed=0, epoch=0)
        b = collate(plan[0], examples, seq_len=64, batching=mode, pad_id=tokenizer.pad_token_id)
        assert b.attention_mask is not None and b.attention_mask.sum() == b.n_tokens
        assert b.input_ids.shape[1] == (64 if mode == "pad" else max(lengths[i] for r in plan[0] for i in r))


def test_padding_waste_under_10_percent_on_the_paper_records(tokenizer):
    padding_waste_check(PERSDISTILL_FIXTURE, tokenizer)  # 300 of the paper's records


def test_padding_waste_under_10_percent_on_the_full_paper_data(tokenizer, shared_data):
    padding_waste_check(shared_data / "persdistill-codegen6b", tokenizer)


def padding_waste_check(folder: Path, tokenizer) -> None:
    records, _ = load_records([str(folder / f) for f in PAPER_FILES])
    examples, _ = encode_records(records, tokenizer, seq_len=2048)
    lengths = [len(e) for e in examples]
    packed = plan_epoch(lengths, seq_len=2048, micro_batch=4, batching="pack", seed=0, epoch=0)
    padded = plan_epoch(lengths, seq_len=2048, micro_batch=4, batching="pad", seed=0, epoch=0)
    assert padding_waste(packed, lengths, seq_len=2048, batching="pack") < 0.10
    assert padding_waste(padded, lengths, seq_len=2048, batching="pad") > 0.5  # the reference's setting


def test_packing_check_refuses_a_model_that_leaks_across_examples(tiny_model_dir, tokenizer):
    from persd.runtime.errors import PersdError
    from persd.trainers.data import Record
    from persd.trainers.loop import check_packing
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    recs = [Record(f"t{i}/persd", f"t{i}", "persd", f"def f{i}(x):\n", f"    return x - {i}\n") for i in range(2)]
    examples, _ = encode_records(recs, tokenizer, seq_len=64)

    class Engine(torch.nn.Module):  # what the check sees: an engine whose forward ignores the restart
        def __init__(self, leak: bool):
            super().__init__()
            self.model, self.leak, self.device = model, leak, torch.device("cpu")

        def forward(self, input_ids, position_ids, **kw):
            if self.leak:
                position_ids = torch.arange(input_ids.shape[1])[None]
            return self.model(input_ids=input_ids, position_ids=position_ids, **kw)

    check_packing(Engine(leak=False), examples, tokenizer.pad_token_id)
    with pytest.raises(PersdError, match="attends across packed examples"):
        check_packing(Engine(leak=True), examples, tokenizer.pad_token_id)
