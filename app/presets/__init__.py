"""Presets: starter projects under ``templates/`` that a run copies into an empty workspace.

``manifest`` loads them, ``matcher`` picks one for a prompt, ``copier`` seeds a workspace
(atomically, honouring the run's stop gate) and ``check`` validates the catalog.
"""

from app.presets.check import check_catalog, check_preset
from app.presets.copier import copy_preset, workspace_is_empty
from app.presets.manifest import Catalog, Preset, PresetError, load_catalog, load_preset
from app.presets.matcher import Match, Matcher, Method, match_prompt, normalise

__all__ = [
    "Catalog",
    "Match",
    "Matcher",
    "Method",
    "Preset",
    "PresetError",
    "check_catalog",
    "check_preset",
    "copy_preset",
    "load_catalog",
    "load_preset",
    "match_prompt",
    "normalise",
    "workspace_is_empty",
]
