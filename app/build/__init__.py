"""The build that follows a completed vue_project run (see :mod:`app.build.runner`)."""

from app.build.runner import (
    BUILD_DIR_PREFIX,
    INSTALL_STAMP,
    BuildFailed,
    BuildFailureCode,
    BuildResult,
    BuildSettings,
    discard_build,
    publish_build,
    run_build,
)

__all__ = [
    "BUILD_DIR_PREFIX",
    "INSTALL_STAMP",
    "BuildFailed",
    "BuildFailureCode",
    "BuildResult",
    "BuildSettings",
    "discard_build",
    "publish_build",
    "run_build",
]
