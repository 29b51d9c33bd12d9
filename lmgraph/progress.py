"""Live progress on stderr for long work: batches, evaluations and compiles.

Every ``progress=`` argument in lmgraph takes one of:

* ``False`` / ``None`` / ``"never"`` -- quiet (the default in the Python API);
* ``True`` / ``"auto"`` -- a live display on stderr when stderr is a terminal, nothing otherwise
  (so logs, pipes and CI output stay clean);
* ``"always"`` -- draw even when stderr is not a terminal (there, each display prints its final
  state once, as a line of a log).

``rich`` draws the display; it is imported only when a display is actually shown.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from .errors import ConfigError

MODES = ("auto", "always", "never")


def progress_mode(progress: Any) -> str:
    """``progress=`` as one of :data:`MODES` (a ConfigError for anything else)."""
    if progress is None or progress is False:
        return "never"
    if progress is True:
        return "auto"
    if isinstance(progress, str) and progress in MODES:
        return progress
    raise ConfigError(f"progress={progress!r} is not a progress setting", field="progress",
                      fix="pass True (a live display when stderr is a terminal), 'always' (draw even in logs), "
                          "or False (quiet).")


def display_stream(progress: Any, stream: TextIO | None = None) -> TextIO | None:
    """The stream a display for ``progress`` draws on (stderr by default), or None for no display."""
    mode = progress_mode(progress)
    if mode == "never":
        return None
    out = stream if stream is not None else sys.stderr
    if mode == "always":
        return out
    try:
        return out if out.isatty() else None
    except (AttributeError, ValueError):  # a closed or odd stream: no display
        return None


class LiveBar:
    """One live region on ``stream``: an optional header line above one bar (done of total) with a
    text field. Nothing is drawn until :meth:`start`; :meth:`stop` leaves the final state on a
    non-terminal stream and (with ``transient``) clears it from a terminal."""

    def __init__(self, stream: TextIO, *, header: Callable[[], str] | None = None, transient: bool = False) -> None:
        self.stream = stream
        self.header = header
        self.transient = transient
        self._progress: Any = None
        self._task: Any = None
        self._lock = threading.Lock()

    def start(self, description: str, total: int | None) -> None:
        from rich.console import Console, RenderableType
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.text import Text

        # never the notebook widget path (it needs ipywidgets): off a terminal, a display prints its
        # final state as a line when it stops
        console = Console(file=self.stream, force_jupyter=False)
        if not console.is_terminal:  # a log: one line per display, not cut at 80 columns
            console = Console(file=self.stream, force_jupyter=False, width=200)
        header = self.header
        on_terminal = console.is_terminal

        class _Progress(Progress):
            def get_renderables(self) -> Iterator[RenderableType]:
                if header is not None:
                    for line in header().splitlines():
                        yield Text(line, overflow="ellipsis", no_wrap=True)
                yield self.make_tasks_table(self.tasks)

        try:
            stdout_tty = sys.stdout.isatty()
        except (AttributeError, ValueError):
            stdout_tty = False
        self._progress = _Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
            transient=self.transient and on_terminal, refresh_per_second=4,
            # lines printed to stdout while the bar is drawn go above it -- but only when stdout is the
            # same terminal: a redirected stdout (results piped to a file) is never captured
            redirect_stdout=on_terminal and stdout_tty, redirect_stderr=on_terminal)
        self._task = self._progress.add_task(description, total=total, info="")
        self._progress.start()

    def update(self, *, advance: int = 0, info: str | None = None, description: str | None = None) -> None:
        if self._progress is None:
            return
        fields: dict[str, Any] = {}
        if info is not None:
            fields["info"] = info
        if description is not None:
            fields["description"] = description
        self._progress.update(self._task, advance=advance, **fields)

    def stop(self) -> None:
        with self._lock:
            progress, self._progress = self._progress, None
        if progress is not None:
            progress.stop()


class RowProgress:
    """Counts the rows of one batch or evaluation -- done of total, failures, the running mean of
    the scores -- and shows them on a :class:`LiveBar` (when one is given).

    ``evaluate(progress=...)`` and ``Program.batch(progress=...)`` accept one of these too (a compile
    hands its evaluations one whose bar carries the compile's status line); it serves one run.
    """

    def __init__(self, total: int, label: str, bar: LiveBar | None = None) -> None:
        self.total = total
        self.label = label
        self.bar = bar
        self.done = 0
        self.failures = 0
        self.scored = 0
        self.score_sum = 0.0
        self._started = False

    @property
    def mean(self) -> float | None:
        return self.score_sum / self.scored if self.scored else None

    def info(self) -> str:
        parts = [f"failures {self.failures}"]
        if self.mean is not None:
            parts.append(f"mean {self.mean:.3f}")
        return " · ".join(parts)

    def start(self) -> None:
        if not self._started and self.bar is not None:
            self._started = True
            self.bar.start(self.label, self.total)
            self.bar.update(info=self.info())

    def row(self, ok: bool, score: float | None = None) -> None:
        """One row finished: ``ok`` False for a failed run (or a metric that raised on it)."""
        self.done += 1
        if not ok:
            self.failures += 1
        if score is not None:
            self.scored += 1
            self.score_sum += score
        if self.bar is not None:
            self.start()
            self.bar.update(advance=1, info=self.info())

    def close(self) -> None:
        if self.bar is not None and self._started:
            self.bar.stop()

    def summary(self) -> str:
        return f"{self.label}: {self.done}/{self.total} rows, {self.info()}"


def row_progress(progress: Any, *, total: int, label: str) -> RowProgress | None:
    """A :class:`RowProgress` for ``progress=`` (one passed in is returned as is), or None when quiet."""
    if isinstance(progress, RowProgress):
        return progress
    stream = display_stream(progress)
    if stream is None:
        return None
    return RowProgress(total, label, LiveBar(stream))


__all__ = ["MODES", "LiveBar", "RowProgress", "display_stream", "progress_mode", "row_progress"]
