"""Memory plan: will this model, ZeRO stage and offload choice fit on these GPUs and nodes?

Model states (parameters, gradients, optimizer) come from DeepSpeed's own estimators
(`estimate_zero2_model_states_mem_needs`, `estimate_zero3_model_states_mem_needs`, which
assume 16-bit training with fp32 Adam states); activations and logits are added for the
micro-batch: per layer about 34*s*b*h bytes in 16-bit with memory-efficient attention
(Korthikanti et al. 2022), only the layer inputs (2*s*b*h) with gradient checkpointing,
and the logits with their fp32 copy and gradient (10*s*b*V). Figures are estimates; the
plan refuses only what cannot fit, before any weight is loaded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from persd.runtime.errors import PersdError, UsageError

GiB = 2**30
CUDA_OVERHEAD = 1.5 * GiB  # CUDA context and NCCL buffers
USABLE = 0.9  # of a GPU's memory: allocator fragmentation and estimate error

# Shapes of well-known code models (params, layers, hidden, vocab), for planning without a download.
KNOWN = {
    "codegen-6b": (6.1e9, 33, 4096, 51200),
    "codegen-16b": (16.1e9, 34, 6144, 51200),
    "starcoder-15b": (15.5e9, 40, 6144, 49152),
    "starcoder2-15b": (16.0e9, 40, 6144, 49152),
    "qwen2.5-coder-7b": (7.6e9, 28, 3584, 152064),
    "qwen2.5-coder-14b": (14.8e9, 48, 5120, 152064),
    "llama-1b": (1.2e9, 16, 2048, 128256),
}


@dataclass
class ModelShape:
    name: str
    params: int
    largest_layer: int
    layers: int
    hidden: int
    vocab: int


@dataclass
class Plan:
    model: str
    params: int
    stage: int
    offload_optimizer: bool
    offload_params: bool
    gpus_per_node: int
    nodes: int
    seq_len: int
    micro_batch: int
    gradient_checkpointing: bool
    model_states_gpu: float
    activations_gpu: float
    total_gpu: float
    gpu_memory: float
    cpu_per_node: float
    cpu_memory: float

    @property
    def fits_gpu(self) -> bool:
        return self.total_gpu <= USABLE * self.gpu_memory

    @property
    def fits_cpu(self) -> bool:
        return self.cpu_per_node <= self.cpu_memory

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(fits_gpu=self.fits_gpu, fits_cpu=self.fits_cpu)
        return d


def shape_of(model: str) -> ModelShape:
    """A known model name, or a model directory whose config.json is read (the model is built on the meta device)."""
    if model.lower() in KNOWN:
        p, layers, hidden, vocab = KNOWN[model.lower()]
        return ModelShape(model, int(p), vocab * hidden, layers, hidden, vocab)
    path = Path(model)
    if not (path / "config.json").is_file():
        raise UsageError(f"--model {model}: not a model directory with config.json, nor a known shape "
                         f"({', '.join(KNOWN)})")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    params = {id(p): p.numel() for p in skeleton.parameters()}
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in skeleton.modules())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", 1)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", 1)
    return ModelShape(str(model), sum(params.values()), largest, int(layers), int(hidden), int(text.vocab_size))


def activation_bytes(shape: ModelShape, *, seq_len: int, micro_batch: int, checkpointing: bool) -> float:
    sbh = seq_len * micro_batch * shape.hidden
    per_layer = 34.0 * sbh
    layers = (2.0 * sbh * shape.layers + per_layer) if checkpointing else per_layer * shape.layers
    logits = 10.0 * seq_len * micro_batch * shape.vocab
    return layers + logits


def make_plan(shape: ModelShape, *, stage: int, offload_optimizer: bool, offload_params: bool, gpus_per_node: int,
              nodes: int, seq_len: int, micro_batch: int, gradient_checkpointing: bool, gpu_memory: float,
              cpu_memory: float) -> Plan:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            shape.params, shape.largest_layer, num_gpus_per_node=gpus_per_node, num_nodes=nodes,
            cpu_offload=offload_optimizer or offload_params, cpu_offload_params=offload_params, zero_init=True)
    elif stage in (1, 2):
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            shape.params, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=offload_optimizer)
    else:  # plain data parallel: 16-bit params and grads, fp32 master and Adam states on every GPU
        gpu, cpu = 20 * shape.params, 4 * shape.params * gpus_per_node * 1.5
    act = activation_bytes(shape, seq_len=seq_len, micro_batch=micro_batch, checkpointing=gradient_checkpointing)
    return Plan(shape.name, shape.params, stage, offload_optimizer, offload_params, gpus_per_node, nodes, seq_len,
                micro_batch, gradient_checkpointing, float(gpu), act, float(gpu) + act + CUDA_OVERHEAD,
                gpu_memory, float(cpu), cpu_memory)


def render(plan: Plan) -> None:
    from rich.console import Console
    from rich.table import Table

    off = "+".join(x for x, on in (("optimizer", plan.offload_optimizer), ("params", plan.offload_params)) if on)
    t = Table(title=f"memory plan: {plan.model} ({plan.params / 1e9:.2f}B params), ZeRO-{plan.stage}"
                    f"{', offload ' + off if off else ''}, {plan.nodes} node(s) x {plan.gpus_per_node} GPU(s)")
    t.add_column("what")
    t.add_column("estimate", justify="right")
    t.add_column("available", justify="right")
    t.add_column("fits")
    g = lambda b: f"{b / GiB:,.1f} GiB"  # noqa: E731
    t.add_row("per GPU: model states (DeepSpeed estimator)", g(plan.model_states_gpu), "", "")
    t.add_row(f"per GPU: activations + logits (seq {plan.seq_len} x micro-batch {plan.micro_batch}, "
              f"checkpointing {'on' if plan.gradient_checkpointing else 'off'})", g(plan.activations_gpu), "", "")
    t.add_row(f"per GPU: total (+ CUDA overhead; usable: {USABLE:.0%} of the GPU)", g(plan.total_gpu),
              g(plan.gpu_memory), "[green]yes" if plan.fits_gpu else "[red]NO")
    t.add_row("per node: CPU memory", g(plan.cpu_per_node), g(plan.cpu_memory),
              "[green]yes" if plan.fits_cpu else "[red]NO")
    Console().print(t)


def refuse_if_unfit(plan: Plan) -> None:
    problems = []
    if not plan.fits_gpu:
        problems.append(f"needs about {plan.total_gpu / GiB:.1f} GiB per GPU, more than {USABLE:.0%} of "
                        f"its {plan.gpu_memory / GiB:.1f} GiB")
    if not plan.fits_cpu:
        problems.append(f"needs about {plan.cpu_per_node / GiB:.1f} GiB CPU memory per node, "
                        f"{plan.cpu_memory / GiB:.1f} GiB available")
    if problems:
        hints = "try ZeRO-3 (--deepspeed zero3), CPU offload (--deepspeed zero3-offload), more GPUs or nodes, "
        hints += "a smaller --micro-batch, or --gradient-checkpointing"
        raise PersdError(f"memory plan: {plan.model} with ZeRO-{plan.stage} will not fit: "
                         + "; ".join(problems) + f" ({hints}; --no-plan-check to try anyway)")
