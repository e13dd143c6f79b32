"""Sizing the vllm student's CPU KV cache, and reading the root cause of a failed start (no vLLM needed)."""
from __future__ import annotations

import pytest
from persd.runtime.errors import UsageError
from persd.runtime.student.vllm_memory import GiB, NodeMemory, size_kv_cache

PER_TOKEN = 2 * 32 * 8 * 128 * 2  # a 7B-class model in bf16: 128 KiB a token


def plan(available_gib: float, *, seqs: int = 64, max_model_len: int = 2048, weights_gib: float = 0.0):
    node = NodeMemory(0, int(32 * GiB), int(available_gib * GiB))
    return size_kv_cache(per_token=PER_TOKEN, max_model_len=max_model_len, block_size=128, seqs=seqs,
                         weights=int(weights_gib * GiB), node=node)


def test_small_need_is_met_in_full():
    p = plan(30, seqs=4, max_model_len=512)
    assert p.kv_bytes == 4 * 512 * PER_TOKEN  # whole blocks already


def test_large_need_takes_a_share_of_what_is_free_after_weights():
    p = plan(20, weights_gib=6)
    assert p.kv_bytes < 64 * 2048 * PER_TOKEN
    assert p.kv_bytes <= (20 - 6 - 1.5) * 0.5 * GiB
    assert p.kv_bytes >= 2048 * PER_TOKEN  # one full-length sequence always fits
    assert p.kv_bytes % (128 * PER_TOKEN) == 0


def test_tight_memory_still_gives_one_sequence():
    p = plan(6.0, weights_gib=4.0)  # budget 0.5 GiB; one 2048-token sequence is 0.25 GiB (+ a block)
    assert 2048 * PER_TOKEN <= p.kv_bytes <= 0.5 * GiB


def cli_message(exc: Exception) -> str:
    """The message as persd collect/eval print it: runtime fields renamed to their flags."""
    from persd.config import runtime_errors_named
    from persd.engine.collect.config import CollectConfig

    try:
        with runtime_errors_named(CollectConfig()):
            raise exc
    except UsageError as renamed:
        return str(renamed)


def test_nothing_fits_names_the_flags():
    with pytest.raises(UsageError) as err:
        plan(2.0, weights_gib=1.0, max_model_len=16384)
    msg = cli_message(err.value)
    assert msg.startswith("--student.max-model-len: ") and "16384-token" in msg and "--student.kv-cache-gib" in msg
    assert "NUMA node 0" in msg


VLLM_LOG = """\
(VllmWorker-0 pid=21467) ERROR 12-02 03:41:41 [multiproc_executor.py:953] WorkerProc failed to start.
(VllmWorker-0 pid=21467) ERROR 12-02 03:41:41 [multiproc_executor.py:953] Traceback (most recent call last):
(VllmWorker-0 pid=21467) ERROR 12-02 03:41:41 [multiproc_executor.py:953]     raise ValueError(
(VllmWorker-0 pid=21467) ERROR 12-02 03:41:41 [multiproc_executor.py:953] ValueError: Available memory on node 0 \
(5.69/6.96 GiB) on startup is less than desired CPU memory utilization (0.9, 6.27 GiB). On the CPU backend, the \
`--gpu-memory-utilization` flag controls the fraction of CPU memory reserved (despite its name).
(EngineCore pid=20701) ERROR 12-02 03:41:45 [core.py:1510] Exception: WorkerProc initialization failed due to an \
exception in a background process. See stack trace for root cause.
Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for root cause.
"""


def test_root_cause_skips_vllms_wrappers_and_keeps_one_sentence():
    from persd.runtime.student.vllm_backend import first_sentence, root_cause

    cause = root_cause(VLLM_LOG)
    assert cause is not None and cause.startswith("ValueError: Available memory on node 0 (5.69/6.96 GiB)")
    assert first_sentence(cause).endswith("(0.9, 6.27 GiB).")


def test_a_memory_failure_is_the_users_to_fix(tmp_path):
    from persd.runtime.student.base import StudentConfig, StudentStartError
    from persd.runtime.student.vllm_backend import start_failure

    log = tmp_path / "vllm.log"
    log.write_text("earlier run: ValueError: something else entirely\n" + VLLM_LOG)
    mark = len("earlier run: ValueError: something else entirely\n")
    err = start_failure(StudentConfig(backend="vllm", model="m", gpu_memory_utilization=0.9),
                        RuntimeError("Engine core initialization failed. See root cause above."), str(log), mark)
    assert isinstance(err, UsageError) and err.exit_code == 2
    assert "Available memory on node 0" in str(err) and "lower --student.gpu-memory-utilization" in cli_message(err)
    assert str(log) in str(err) and "rerun" not in str(err) and str(err).count("\n") <= 1
    other = tmp_path / "other.log"
    other.write_text("(EngineCore pid=1) ERROR 12-02 03:41:45 [core.py:1] KeyError: 'LlamaForCausalLM'\n")
    err = start_failure(StudentConfig(backend="vllm", model="m"), RuntimeError("Engine core initialization failed."),
                        str(other), 0)
    assert isinstance(err, StudentStartError) and err.exit_code == 1 and "KeyError" in str(err)


def test_unset_memory_settings_leave_vllm_its_defaults():
    pytest.importorskip("vllm")
    from persd.runtime.student.base import StudentConfig
    from persd.runtime.student.vllm_backend import engine_args_kwargs, on_cpu

    kwargs = engine_args_kwargs(StudentConfig(backend="vllm", model="m"))
    assert "gpu_memory_utilization" not in kwargs and "kv_cache_memory_bytes" not in kwargs
    assert kwargs["enforce_eager"] is on_cpu()
    given = engine_args_kwargs(StudentConfig(backend="vllm", model="m", gpu_memory_utilization=0.5, kv_cache_gib=2,
                                             enforce_eager=False))
    assert (given["gpu_memory_utilization"], given["kv_cache_memory_bytes"], given["enforce_eager"]) == (
        0.5, 2 << 30, False)
