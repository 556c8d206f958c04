"""A re-armable wake-up for one waiter at a time, on anyio."""

from __future__ import annotations

import anyio


class Signal:
    """Wakes tasks waiting in :meth:`wait` whenever :meth:`fire` is called.

    anyio's :class:`~anyio.Event` cannot be cleared; this replaces it after every fire, so a
    waiter loops ``while not condition: await signal.wait()``.
    """

    def __init__(self) -> None:
        self._event = anyio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()
