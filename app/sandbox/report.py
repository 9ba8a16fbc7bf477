"""How builds are confined here, in words for the banner and /readyz."""

from __future__ import annotations

from typing import Any

from app.sandbox.settings import SandboxSettings

UNCONFINED_WARNING = (
    "builds run UNCONFINED with the server's privileges (RUNFORGE_BUILD_SANDBOX=none): a build script "
    "the model wrote can read every app, the database and the preview-link secret; one trusted user only"
)


def describe_sandbox(settings: SandboxSettings) -> dict[str, Any]:
    """The kind, whether it works (and why not), a warning for ``none``, and how each limit holds."""
    from app.sandbox import sandbox_for  # the package imports this module

    sandbox = sandbox_for(settings)
    problem = sandbox.problem()
    report: dict[str, Any] = {"kind": sandbox.name, "available": problem is None}
    if problem is not None:
        report["problem"] = problem
    if sandbox.name == "none":
        report["warning"] = UNCONFINED_WARNING
    return {**report, "limits": sandbox.enforced_limits()}


def banner_line(settings: SandboxSettings) -> str:
    report = describe_sandbox(settings)
    if report["kind"] == "none":
        return f"Build sandbox: NONE. WARNING: {UNCONFINED_WARNING}"
    if not report["available"]:
        return f"Build sandbox: UNAVAILABLE, builds will fail: {report['problem']}"
    limits = ", ".join(f"{name} by {how}" for name, how in report["limits"].items())
    return f"Build sandbox: {report['kind']} (limits: {limits})"
