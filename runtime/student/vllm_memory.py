"""How much KV cache the vllm backend asks for on a CPU machine, when the user did not say.

vLLM's CPU worker reserves `gpu_memory_utilization` (default 0.9) of its NUMA node's *total*
memory and refuses to start when the node has less than that *free*. On a shared machine, or one
whose node 0 is a fraction of the RAM, that default fails before the model loads. So persd sizes
the cache itself and hands vLLM an explicit `kv_cache_memory_bytes`:

    need   = min(max_num_seqs, max_concurrency) sequences of max_model_len tokens
    budget = free memory on the node (as vLLM counts it) - weights - RESERVE_BYTES
    cache  = min(need, max(one sequence, SHARE * budget)), in whole blocks

and refuses (a one-sentence ConfigError naming the fields) when not even one max_model_len
sequence fits. The arithmetic (`size_kv_cache`) needs no vLLM; `plan_for` reads vLLM's config.
An explicit --kv-cache-gib, --gpu-memory-utilization or VLLM_CPU_KVCACHE_SPACE skips all this.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persd.runtime.errors import ConfigError

GiB = 1 << 30
# What the engine core and worker processes hold besides weights and KV cache (torch, vLLM, the
# activations of one step): for the tiny model, RSS 0.51 GiB (engine core) + 0.67 GiB (worker,
# of which 0.12 GiB KV cache) after one request; kept at 1.5 GiB so the cache never takes it.
RESERVE_BYTES = int(1.5 * GiB)
SHARE = 0.5  # of what is left: the sandbox, the teacher and other programs need memory too
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class NodeMemory:
    node: int
    total: int
    available: int


@dataclass(frozen=True)
class KVPlan:
    """The numbers behind one sizing decision (logged, and named in the error when nothing fits)."""

    kv_bytes: int
    per_token: int
    max_model_len: int
    seqs: int
    weights: int
    node: NodeMemory

    def describe(self) -> str:
        return (f"KV cache {self.kv_bytes / GiB:.2f} GiB ({self.kv_bytes // self.per_token} tokens; "
                f"{self.seqs} x {self.max_model_len} would need "
                f"{self.seqs * self.max_model_len * self.per_token / GiB:.2f}), "
                f"weights ~{self.weights / GiB:.2f} GiB, NUMA node {self.node.node}: "
                f"{self.node.available / GiB:.2f} of {self.node.total / GiB:.2f} GiB free")


def _blocks(nbytes: int, block_bytes: int) -> int:
    return -(-nbytes // block_bytes) * block_bytes


def size_kv_cache(*, per_token: int, max_model_len: int, block_size: int, seqs: int, weights: int,
                  node: NodeMemory, reserve: int = RESERVE_BYTES, share: float = SHARE) -> KVPlan:
    """The cache size for these needs and this much free memory; ConfigError when one sequence cannot fit."""
    block_bytes = per_token * block_size
    one = _blocks(max_model_len * per_token, block_bytes) + block_bytes  # a spare block, as vLLM rounds
    need = _blocks(seqs * max_model_len * per_token, block_bytes)
    budget = node.available - weights - reserve
    if one > budget:
        raise ConfigError(
            "max_model_len",
            f"the vllm student does not fit in memory: one {max_model_len}-token sequence needs "
            f"{one / GiB:.2f} GiB of KV cache, the weights ~{weights / GiB:.2f} GiB and vLLM's processes "
            f"~{reserve / GiB:.1f} GiB, but NUMA node {node.node} has {node.available / GiB:.2f} of "
            f"{node.total / GiB:.2f} GiB free; lower {{max_model_len}}, free memory, or set {{kv_cache_gib}}",
            "student")
    kv = min(need, max(one, int(share * budget) // block_bytes * block_bytes))
    return KVPlan(kv, per_token, max_model_len, seqs, weights, node)


# ------------------------------------------------------------------ from vLLM's config


def node_memory() -> NodeMemory:
    """Free memory where vLLM's CPU worker will allocate: the NUMA node of the first CPU this process may
    run on (or the first visible node), counted by vLLM's own function (MemFree + file cache + reclaimable
    slab, clamped to a cgroup limit)."""
    from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info, get_visible_memory_node

    node = get_allowed_cpu_list()[0].numa_node
    visible = get_visible_memory_node()
    if visible and node not in visible:
        node = visible[0]
    info = get_memory_node_info(node)
    return NodeMemory(node, int(info.total_memory), int(info.available_memory))


def weight_bytes(model_config: Any) -> int:
    """The model's weights in memory: its checkpoint files (scaled to the dtype vLLM loads them in) for a
    local directory, else an estimate from the architecture (12 h^2 per layer plus the embeddings)."""
    import torch

    itemsize = torch.empty((), dtype=model_config.dtype).element_size()
    hf = model_config.hf_text_config
    path = Path(model_config.model)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES]
        if any(p.suffix == ".safetensors" for p in files):
            files = [p for p in files if p.suffix == ".safetensors"]
        on_disk = sum(p.stat().st_size for p in files)
        saved = getattr(hf, "torch_dtype", None) or getattr(hf, "dtype", None)
        if on_disk and isinstance(saved, torch.dtype):
            return on_disk * itemsize // torch.empty((), dtype=saved).element_size()
        if on_disk:
            return on_disk
    hidden = int(getattr(hf, "hidden_size", 0) or 0)
    layers = int(getattr(hf, "num_hidden_layers", 0) or 0)
    vocab = int(getattr(hf, "vocab_size", 0) or 0)
    return (12 * layers * hidden * hidden + 2 * vocab * hidden) * itemsize


def kv_bytes_per_token(vllm_config: Any) -> int:
    """Keys and values of every layer for one token (full attention; an upper bound for sliding windows)."""
    from vllm.utils.torch_utils import kv_cache_dtype_str_to_dtype

    mc, pc = vllm_config.model_config, vllm_config.parallel_config
    dtype = kv_cache_dtype_str_to_dtype(vllm_config.cache_config.cache_dtype, mc)
    itemsize = dtype.itemsize if hasattr(dtype, "itemsize") else 2
    return 2 * mc.get_num_layers(pc) * mc.get_num_kv_heads(pc) * mc.get_head_size() * itemsize


def check_explicit(vllm_config: Any, kv_gib: float | None, utilization: float | None) -> None:
    """An explicit size that cannot fit fails now, as vLLM's worker would after a minute of start-up."""
    node = node_memory()
    weights = weight_bytes(vllm_config.model_config)
    if kv_gib and kv_gib * GiB + weights > node.available:
        raise ConfigError("kv_cache_gib", f"{kv_gib:g}: NUMA node {node.node} has {node.available / GiB:.2f} of "
                          f"{node.total / GiB:.2f} GiB free (the weights take ~{weights / GiB:.2f}); lower it, or "
                          f"leave it unset so persd sizes the KV cache from the free memory", "student")
    if not kv_gib and utilization and utilization * node.total > node.available:
        raise ConfigError("gpu_memory_utilization", f"{utilization:g}: on CPU it is a fraction of NUMA node "
                          f"{node.node}'s {node.total / GiB:.2f} GiB, but only {node.available / GiB:.2f} GiB are "
                          f"free; lower it, or leave it unset so persd sizes the KV cache from the free memory",
                          "student")


def plan_for(vllm_config: Any, max_concurrency: int) -> KVPlan:
    """Size the CPU KV cache for a vLLM config whose kv_cache_memory_bytes is still unset."""
    seqs = max(1, min(vllm_config.scheduler_config.max_num_seqs, max_concurrency))
    return size_kv_cache(per_token=kv_bytes_per_token(vllm_config),
                         max_model_len=vllm_config.model_config.max_model_len,
                         block_size=vllm_config.cache_config.block_size or 16, seqs=seqs,
                         weights=weight_bytes(vllm_config.model_config), node=node_memory())

