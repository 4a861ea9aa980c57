"""The per-session set of callback tokens, as a small protocol.

A session with a callback receiver gives each create its own token before the create is
sent, ties it to the task id the reply gave, and forgets it when no task came of it or the
session closes. The receiver's in-process implementation lives in ``callbacks``; the
protocol lets a set shared by several processes stand in its place.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

__all__ = ["CallbackTokens"]

_Binding = TypeVar("_Binding")


class CallbackTokens(Protocol[_Binding]):
    """One session's callback tokens: issued per create, bound to its task, then retired."""

    @property
    def open_tokens(self) -> int:
        """Tokens of this session's creates whose tasks are not yet seen finished."""

    def issue(self) -> tuple[_Binding, str]:
        """A fresh token for one create (its binding and its callback URL), before the send."""

    def bind(self, binding: _Binding, task_id: str) -> None:
        """The create's reply came: tie the token to its task id (an early callback applies)."""

    def discard(self, binding: _Binding) -> None:
        """The create made no task (or none sent with this token): forget the token."""

    def close(self) -> None:
        """The session closed: its tokens are forgotten (their callbacks get 404)."""
