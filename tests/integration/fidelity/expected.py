"""What a fidelity case expects of mdmq's reading of one answer, and the check each provider's module uses."""

from __future__ import annotations

from dataclasses import dataclass

from workers.providers.base import HOLDING, Outcome, Push, PushProvider, PushResult

# An advice becomes a hold reason, in a 200-character column.
MAX_ADVICE = 190


@dataclass(frozen=True)
class Expected:
    status: int
    reason: str
    outcome: Outcome
    advice: str | None = None  # words the advice must contain


def check(result: PushResult, expected: Expected) -> None:
    """The raw status and reason as the provider documents them, mdmq's outcome, and an advice exactly
    where the answer may be the organization's."""
    assert (result.status, result.reason, result.outcome) == (
        expected.status,
        expected.reason,
        expected.outcome,
    )
    if expected.advice is not None:
        assert expected.advice in (result.advice or ""), result.advice
    if result.outcome in (Outcome.config, Outcome.dead_token):
        assert result.advice, "a configuration or ambiguous answer names the admin's fix"
    if result.outcome not in HOLDING and result.outcome is not Outcome.dead_token:
        assert result.advice is None, "only an answer that may be the organization's carries advice"
    assert len(result.advice or "") < MAX_ADVICE


async def send_once(provider: PushProvider, push: Push) -> PushResult:
    """One push through `provider`, which is closed after it."""
    try:
        (result,) = await provider.send([push])
    finally:
        await provider.close()
    return result
