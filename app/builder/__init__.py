"""The build that follows a completed vue_project run (see :mod:`app.builder.runner`)."""

from app.builder.publish import BUILD_DIR_PREFIX, discard_build, publish_build
from app.builder.runner import INSTALL_STAMP, BuildFailed, BuildFailureCode, BuildResult, run_build

__all__ = [
    "BUILD_DIR_PREFIX",
    "INSTALL_STAMP",
    "BuildFailed",
    "BuildFailureCode",
    "BuildResult",
    "discard_build",
    "publish_build",
    "run_build",
]
