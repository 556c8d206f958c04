"""The pluggy markers for the ``tunplug`` project name.

Kept in a module of its own, with nothing else in it, so that a plugin can import the marker
without pulling in the rest of the core.
"""

import pluggy

PROJECT_NAME = "tunplug"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
