"""What a run's prompt says that something else reads back: the agent writes these lines
(app/agent/codegen.py, app/agent/prompts/*.md) and the simulator keys on them
(app/simulator/requests.py). Here, so that neither has to import the other."""

from __future__ import annotations

# Starts the block that carries a preset's instruction in a run's prompt (the simulator keys on it).
TEMPLATE_MARKER = "[Runforge template:"
# The first line of every system prompt (app/agent/prompts/*.md), then the generation type:
# "Output format: vue_project". The prompts are text files, so tests/test_simulator.py checks
# that each one reads back as its own type.
OUTPUT_FORMAT_LINE = "Output format:"
