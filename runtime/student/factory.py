"""Pick a student backend by name; heavy imports (torch, vLLM) happen only for the one chosen."""
from __future__ import annotations

from persd.runtime.errors import ConfigError
from persd.runtime.student.base import BACKENDS, StudentBackend, StudentConfig


def create_student(config: StudentConfig) -> StudentBackend:
    """A not-yet-started backend for `config.backend` ('vllm', 'openai' or 'hf')."""
    name = config.resolved_backend().lower()
    if name == "vllm":
        from persd.runtime.student.vllm_backend import VLLMStudent, import_vllm

        import_vllm("INFO" if config.log_path else "WARNING")  # fail now, with the install hint, rather than at start()
        return VLLMStudent(config)
    if name == "openai":
        from persd.runtime.student.openai_backend import OpenAIStudent

        return OpenAIStudent(config)
    if name == "hf":
        from persd.runtime.student.hf import HFStudent

        return HFStudent(config)
    raise ConfigError("backend", f"unknown backend '{config.backend}' (choose from {', '.join(BACKENDS)})", "student")
