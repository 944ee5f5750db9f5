"""The closed set of API token permissions: what the API's routes require, and all a token may carry."""

from __future__ import annotations

from collections.abc import Iterable

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
    }
)


def unknown_permissions(names: Iterable[str]) -> list[str]:
    """Those of `names` outside the closed set, once each, in the order given."""
    return [name for name in dict.fromkeys(names) if name not in PERMISSIONS]
