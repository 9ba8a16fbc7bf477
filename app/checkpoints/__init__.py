"""Workspace checkpoints: the state after every run, listable, comparable and restorable (see :mod:`.git`)."""

from app.checkpoints.diff import CheckpointDiff, FileChange
from app.checkpoints.git import Checkpoint, CheckpointError, Checkpoints

__all__ = ["Checkpoint", "CheckpointDiff", "CheckpointError", "Checkpoints", "FileChange"]
