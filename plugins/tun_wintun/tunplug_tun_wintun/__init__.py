"""WinTun TUN backend for Windows (ctypes over wintun.dll).

Not implemented yet: the backend is registered so that ``tunplug plugins`` lists it and
reports plainly that it cannot run. Windows cannot be run on the development machines.
"""
