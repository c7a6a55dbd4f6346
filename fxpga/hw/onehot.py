"""A one-hot state machine with ``m.FSM``'s shape: a flip-flop per state."""

from __future__ import annotations

from contextlib import contextmanager

from amaranth import Signal


class OneHotFSM:
    """``with fsm.state("A"):`` … ``fsm.next("B")`` as with ``m.FSM``/``m.State``/``m.next``,
    but each state is a flip-flop of its own (``init`` starts set), so a transition's logic
    is its state's flag and its condition: no state decoder before the state registers.
    Yosys leaves an ``m.FSM`` with an initial value binary-encoded (``fsm_detect`` skips it),
    and on iCE40 its next-state logic was the critical path.

    The states are exclusive, so the blocks of the states are separate ``m.If``s; a state's
    flag is ``fsm.ongoing(name)``. As with ``m.next``, the last ``next`` that applies wins.
    """

    def __init__(self, m, init: str, name: str = "fsm"):
        self.m, self.init, self.name = m, init, name
        self._flags: dict[str, Signal] = {}
        self._current: str | None = None
        self._targets: list[str] = []  # the current state's next() targets so far

    def ongoing(self, state: str) -> Signal:
        if state not in self._flags:
            self._flags[state] = Signal(
                name=f"{self.name}_{state.lower()}", init=int(state == self.init)
            )
        return self._flags[state]

    @contextmanager
    def state(self, state: str):
        assert self._current is None, "states do not nest"
        with self.m.If(self.ongoing(state)):
            self._current, self._targets = state, []
            try:
                yield
            finally:
                self._current = None

    def next(self, state: str):
        assert self._current is not None, "next() belongs in a state"
        # a later next() overrides an earlier one: it clears the states they set
        cleared = {self._current, *self._targets} - {state}
        self.m.d.sync += [self.ongoing(s).eq(0) for s in sorted(cleared)]
        self.m.d.sync += self.ongoing(state).eq(1)
        self._targets.append(state)
