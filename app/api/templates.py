"""The presets, for the page's quick-start buttons."""

from __future__ import annotations

from typing import Any

from litestar import get

from app.api.deps import CurrentUser, ServicesDep
from app.api.openapi import error_responses


@get("/templates", responses=error_responses(401))
async def list_templates(services: ServicesDep, user: CurrentUser) -> list[dict[str, Any]]:
    """Each preset with its quick-start prompts: sending one exactly selects the preset."""
    return [
        {
            "name": preset.name,
            "title": preset.title,
            "description": preset.description,
            "codeGenType": preset.code_gen_type,
            "triggers": list(preset.triggers),
        }
        for preset in services.presets.presets
    ]
