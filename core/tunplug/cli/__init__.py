"""Command-line entry points (``tunplug``; the client, gateway and service CLIs come later)."""
