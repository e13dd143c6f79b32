"""The teacher: a rate-limited, fault-tolerant, cost-aware OpenAI-compatible client that never pays twice."""
from persd.runtime.http import RetryPolicy
from persd.runtime.teacher.client import TeacherClient
from persd.runtime.teacher.config import TeacherConfig
from persd.runtime.teacher.errors import BudgetExceeded, TeacherError
from persd.runtime.teacher.journal import Journal
from persd.runtime.teacher.limiter import RateLimiter
from persd.runtime.teacher.pricing import DEFAULT_PRICES, PriceTable
from persd.runtime.teacher.types import ChatRequest, ChatResponse

__all__ = [
    "BudgetExceeded", "ChatRequest", "ChatResponse", "DEFAULT_PRICES", "Journal", "PriceTable",
    "RateLimiter", "RetryPolicy", "TeacherClient", "TeacherConfig", "TeacherError",
]
