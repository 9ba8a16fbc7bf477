"""The chat page: plain HTML, CSS and JavaScript modules, served as they are (no build step)."""
