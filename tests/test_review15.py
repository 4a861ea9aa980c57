"""Regressions found reviewing the restructuring (one job per module): behaviour that must
be what it was before, checked through the public API."""

from __future__ import annotations

import pytest

from kling_async import KlingSession


def test_a_bad_journal_is_refused_before_a_bad_receiver() -> None:
    """The arguments are checked in the order they always were: the journal before the
    callback receiver, so the same mistake gets the same message."""
    with pytest.raises(TypeError, match="journal must be a path or a Journal, not int"):
        KlingSession(api_key="k", journal=5, callbacks=object())  # type: ignore[arg-type]
