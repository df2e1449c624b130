"""Running two party programs against each other: the message exchange and :func:`run_pair`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trusted_space.errors import ValidationError
from trusted_space.protocols.train_mpc.party import Message, PartyProgram

__all__ = ["Exchange", "run_pair"]


class Exchange:
    """One party's program, fed the other side's messages as they arrive.

    ``start()`` returns the first message; ``feed(messages)`` feeds the other party's messages
    in order and returns this party's messages produced meanwhile. When the program returns,
    :attr:`done` is set and :attr:`result` holds its value.
    """

    def __init__(self, program: PartyProgram) -> None:
        self._program = program
        self.done = False
        self.result: Any = None
        self._started = False

    def start(self) -> list[Message]:
        if self._started:
            raise ValidationError("the program already started")
        self._started = True
        try:
            return [next(self._program)]
        except StopIteration as stop:
            self.done, self.result = True, stop.value
            return []

    def feed(self, messages: Sequence[Message]) -> list[Message]:
        if not self._started:
            raise ValidationError("the program has not started")
        out: list[Message] = []
        for message in messages:
            if self.done:
                raise ValidationError("a message arrived after the program ended")
            try:
                out.append(self._program.send(message))
            except StopIteration as stop:
                self.done, self.result = True, stop.value
        return out


def run_pair(first: PartyProgram, second: PartyProgram) -> tuple[Any, Any, int]:
    """Run two party programs against each other in-process (tests, benchmarks).

    Returns:
        ``(result of first, result of second, exchanges)``, where an exchange is one message
        batch from the first party answered by the second — the number of calls the flow makes.
    """
    a, b = Exchange(first), Exchange(second)
    pending = a.start()
    calls = 0
    started = False
    while not (a.done and b.done):
        if not pending:
            raise ValidationError("protocol deadlock: party 0 has nothing to send")
        calls += 1
        replies = b.start() if not started else []
        started = True
        replies += b.feed(pending)
        pending = a.feed(replies)
    return a.result, b.result, calls
