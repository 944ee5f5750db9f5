"""The store: every SQL statement mdmq runs lives in this package; the rest of the code calls these functions.

Functions take the session first and keyword-only arguments after it. They never commit: the caller owns the
transaction, so that a job writing several tables writes them all or none.
"""

from models.store._sql import lock_deployments
from models.store.deployments import (
    NewDeployment,
    UnknownDevices,
    create_deployments,
    deployment_history,
    get_deployment,
)
from models.store.organizations import ensure_organization
from models.store.transitions import (
    Applied,
    Effects,
    ErrorInfo,
    Move,
    Refusal,
    RefusalReason,
    TransitionResult,
    transition,
)

__all__ = [
    "Applied",
    "Effects",
    "ErrorInfo",
    "Move",
    "NewDeployment",
    "Refusal",
    "RefusalReason",
    "TransitionResult",
    "UnknownDevices",
    "create_deployments",
    "deployment_history",
    "ensure_organization",
    "get_deployment",
    "lock_deployments",
    "transition",
]
