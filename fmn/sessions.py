"""Visitors' sessions on one shared studio: which patches each holds, its limits, and freeing them.

The app serves strangers from one process (a Hugging Face Space, a talk): every browser tab and every
API client is a session (Gradio's session hash). A session's patches live on the shared model as
adapters, so they must not outlive it: they are freed when the session ends (its tab closes: Gradio's
unload event; or Reset) and when it has been idle for `Limits.idle_s` (an API client never says it
left). Whatever the number of visitors, the live adapters are at most `Limits.patches` per live session.
Works without Gradio: a session is any string.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .studio import Studio

__all__ = ["Limits", "Sessions"]


@dataclass(frozen=True)
class Limits:
    patches: int = 8  # per session: erased or uploaded, applied together on every call
    idle_s: float = 3600.0  # a session untouched this long is ended and its patches freed


class Sessions:
    """Session -> the ids of the patches it added to the studio, and when it was last seen."""

    def __init__(self, studio: Studio, limits: Limits = Limits(), clock=time.monotonic):
        self.studio, self.limits, self.clock = studio, limits, clock
        self.owned: dict[str, list[str]] = {}
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()

    def touch(self, session: str) -> None:
        """Marks the session active now, after ending every session idle for longer than the limit."""
        self.expire()
        with self.lock:
            self.seen[session] = self.clock()

    def check_room(self, session: str) -> None:
        """Raises ValueError, before any work, if the session holds as many patches as it may."""
        held = len(self.owned.get(session, []))
        if held >= self.limits.patches:
            raise ValueError(f"Your session applies {held} patches, the most this server allows: "
                             "press Reset (or remove one) before adding another.")

    def add(self, session: str, patch_id: str) -> None:
        with self.lock:
            self.owned.setdefault(session, []).append(patch_id)
            self.seen[session] = self.clock()

    def end(self, session: str) -> int:
        """Frees the session's patches (a closed tab, Reset); returns how many."""
        with self.lock:
            patch_ids = self.owned.pop(session, [])
            self.seen.pop(session, None)
        for patch_id in patch_ids:
            self.studio.remove_patch(patch_id)
        return len(patch_ids)

    def expire(self) -> list[str]:
        """Ends every session idle for longer than `Limits.idle_s`; returns them."""
        now = self.clock()
        with self.lock:
            idle = [s for s, t in self.seen.items() if now - t > self.limits.idle_s]
        for session in idle:
            self.end(session)
        return idle

    def others_hold_patches(self, session: str) -> int:
        """How many patches on the shared model belong to other sessions (or to no session)."""
        with self.lock:
            mine = set(self.owned.get(session, []))
        return len(set(self.studio.patches) - mine)
