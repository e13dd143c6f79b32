"""The teacher: a rate-limited, fault-tolerant, cost-aware OpenAI-compatible client that never pays twice."""
from runtime.http import RetryPolicy
from runtime.teacher.client import TeacherClient
from runtime.teacher.config import TeacherConfig
from runtime.teacher.errors import BudgetExceeded, TeacherError
from runtime.teacher.journal import Journal
from runtime.teacher.limiter import RateLimiter
from runtime.teacher.pricing import DEFAULT_PRICES, PriceTable
from runtime.teacher.types import ChatRequest, ChatResponse

__all__ = [
    "BudgetExceeded", "ChatRequest", "ChatResponse", "DEFAULT_PRICES", "Journal", "PriceTable",
    "RateLimiter", "RetryPolicy", "TeacherClient", "TeacherConfig", "TeacherError",
]
