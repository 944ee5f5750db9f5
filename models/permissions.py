"""The closed set of API token permissions: what the API's routes require, and all a token may carry."""

from __future__ import annotations

from collections.abc import Iterable

# The operator's page (`/ops`): every organization's queues, rollouts, holds and credentials. A token carrying
# it carries nothing else, so that no organization's token opens the page and an operator's token acts for no
# organization; only `mdmq token create` makes one (no API route creates tokens).
OPS_VIEW = "mdm.ops.view"

PERMISSIONS = frozenset(
    {
        "mdm.aosp.command.get",  # a command's push status
        "mdm.audit.get",  # the organization's audit trail
        "mdm.credential.manage",  # upload and list push credentials
        "mdm.deployment.cancel",  # deployments, or a rollout's
        "mdm.deployment.create",
        "mdm.deployment.get",  # one deployment, and the list; rollouts
        "mdm.deployment.retry",  # deployments, or a rollout's
        "mdm.device.get",  # one device (never its token or push magic), and the list
        "mdm.device.manage",  # enroll, update (TokenUpdate), import and unenroll devices
        "mdm.device.report",  # the MDM check-in server's device reports
        "mdm.organization.manage",  # the organization's settings: wake-up rate, share of the bulk lane
        OPS_VIEW,
    }
)


def unknown_permissions(names: Iterable[str]) -> list[str]:
    """Those of `names` outside the closed set, once each, in the order given."""
    return [name for name in dict.fromkeys(names) if name not in PERMISSIONS]


def mixes_ops(names: Iterable[str]) -> bool:
    """Whether `names` put the operator's permission beside an organization's: refused at creation."""
    wanted = set(names)
    return OPS_VIEW in wanted and len(wanted) > 1
