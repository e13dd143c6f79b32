"""The dollar budget: a request is sent only if its worst case fits what is left.

Worst case = estimated prompt tokens + max_tokens x n at the model's price. It is reserved
when the request leaves and replaced by the real cost (from `usage`) when it returns, so the
total can exceed the limit only by estimation error on what was in flight. Attempts that may
have been billed without an answer (a timeout or a dropped connection after sending) are
counted at their worst case: failures are paid for too.
"""
from __future__ import annotations

from dataclasses import dataclass

from persd.runtime.teacher.errors import BudgetExceeded


@dataclass
class Reservation:
    amount: float
    open: bool = True


class Budget:
    def __init__(self, limit_usd: float | None):
        self.limit = limit_usd
        self.spent = 0.0          # confirmed by usage
        self.unconfirmed = 0.0    # possibly billed: sent, never answered
        self.reserved = 0.0       # worst cases of requests in flight
        self.exhausted = False

    def reserve(self, worst_usd: float) -> Reservation:
        if self.limit is not None:
            committed = self.spent + self.unconfirmed + self.reserved
            if self.exhausted or committed + worst_usd > self.limit + 1e-12:
                self.exhausted = True
                raise BudgetExceeded(self.spent + self.unconfirmed, self.reserved, worst_usd, self.limit)
        self.reserved += worst_usd
        return Reservation(worst_usd)

    def settle(self, reservation: Reservation, cost_usd: float) -> None:
        """The answer came back: its real cost replaces the reservation."""
        self._close(reservation)
        self.spent += cost_usd

    def lost(self, reservation: Reservation, possibly_billed_usd: float) -> None:
        """An attempt that may have been billed without an answer."""
        self.unconfirmed += possibly_billed_usd

    def release(self, reservation: Reservation) -> None:
        """The request failed for good: nothing more is reserved for it."""
        self._close(reservation)

    def _close(self, reservation: Reservation) -> None:
        if reservation.open:
            reservation.open = False
            self.reserved = max(0.0, self.reserved - reservation.amount)

    @property
    def total(self) -> float:
        return self.spent + self.unconfirmed
