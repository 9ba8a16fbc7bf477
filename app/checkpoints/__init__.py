"""Workspace checkpoints: the state after every run, listable and restorable (see :mod:`.git`)."""

from app.checkpoints.git import Checkpoint, CheckpointError, Checkpoints

__all__ = ["Checkpoint", "CheckpointError", "Checkpoints"]
