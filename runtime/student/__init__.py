"""Student backends behind one async interface: vLLM in-process, an OpenAI-compatible server, transformers.

    student = create_student(StudentConfig(backend="vllm", model="path"))
    async with student:
        out = await student.generate(StudentRequest(prompt=..., params=SamplingParams(...)))

Importing this package is cheap: torch and vLLM load only when a backend that needs them is created.
"""
from persd.runtime.student.base import (
    BACKENDS,
    BaseStudent,
    RequestRejected,
    SamplingParams,
    StudentBackend,
    StudentConfig,
    StudentError,
    StudentOutput,
    StudentRequest,
)
from persd.runtime.student.factory import create_student

__all__ = [
    "BACKENDS",
    "BaseStudent",
    "SamplingParams",
    "StudentBackend",
    "StudentConfig",
    "StudentError",
    "RequestRejected",
    "StudentOutput",
    "StudentRequest",
    "create_student",
]
