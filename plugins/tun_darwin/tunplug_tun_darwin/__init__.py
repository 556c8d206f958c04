"""utun TUN backend for macOS (PF_SYSTEM control socket).

Not implemented yet: the backend is registered so that ``tunplug plugins`` lists it and
reports plainly that it cannot run. macOS cannot be run on the development machines.
"""
