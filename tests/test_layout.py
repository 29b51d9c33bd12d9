"""The package stays readable: no source file under lmgraph/ grows past MAX_LINES lines.

A file that does should be split into cohesive modules (as lmgraph/cli.py was into cli_commands,
cli_compile and cli_data), not trimmed by packing more onto each line.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lmgraph"
MAX_LINES = 600


def line_counts() -> dict[str, int]:
    """Lines of every .py file under lmgraph/, by path relative to the repository root."""
    return {str(path.relative_to(PACKAGE.parent)): len(path.read_text(encoding="utf-8").splitlines())
            for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_package_has_source_files() -> None:
    counts = line_counts()
    assert "lmgraph/cli.py" in counts and len(counts) > 20, sorted(counts)


def test_no_source_file_has_more_than_600_lines() -> None:
    too_long = {path: n for path, n in line_counts().items() if n > MAX_LINES}
    listing = "\n".join(f"  {path}: {n} lines" for path, n in sorted(too_long.items(), key=lambda kv: -kv[1]))
    assert not too_long, (f"{len(too_long)} file(s) under lmgraph/ have more than {MAX_LINES} lines; split each "
                          f"into cohesive modules:\n{listing}")
