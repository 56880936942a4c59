"""Plain-text / markdown table printing shared by the benchmark scripts."""

from __future__ import annotations


def fmt(x) -> str:
    if isinstance(x, float):
        return "-" if x != x else (f"{x:.3f}" if abs(x) < 100 else f"{x:.0f}")
    return str(x)


def print_table(cols, rows, markdown: bool) -> None:
    cells = [cols] + [[fmt(x) for x in r] for r in rows]
    if markdown:
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in cells[1:]:
            print("| " + " | ".join(r) + " |")
        return
    w = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for r in cells:
        print("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)))
