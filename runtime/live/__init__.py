"""Live spoken conversation: devices, echo handling, VAD, turn-taking and the session loop that front ends drive."""

from .session import LiveEvent, LiveOptions, LiveSession

__all__ = ["LiveEvent", "LiveOptions", "LiveSession"]
