"""Stop strings matched on streamed text, holding back only what could still become a stop string."""

from __future__ import annotations


class StopMatcher:
    """Feed deltas in; get back the text that is safe to show and whether a stop string was hit."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = list(dict.fromkeys(s for s in stops if s))
        self.pending = ""
        #: The stop string that ended the text, once one has (Anthropic's ``stop_sequence`` reports it).
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buffer = self.pending + text
        if not any(stop[0] in buffer for stop in self.stops):
            return buffer, False  # the common case: nothing here can start a stop string
        hits = [(i, stop) for stop in self.stops if (i := buffer.find(stop)) >= 0]
        if hits:
            at, self.matched = min(hits)
            self.pending = ""
            return buffer[:at], True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), hold, -1):
                if buffer.endswith(stop[:size]):
                    hold = size
                    break
        self.pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text
