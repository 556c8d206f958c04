"""The headless client: settings, sources of its configuration, and the service loop.

Who calls it: :mod:`tunplug.cli.headless` (``tunplug-headless-client``) and, later, the
tunnel service for GUIs, which runs the same loop.
"""
