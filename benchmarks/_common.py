"""What the GPU benchmark scripts share: the hardware line and plain-text / markdown tables."""

from __future__ import annotations

import os
import platform

import torch


def hardware(triton_interpret: bool = True) -> str:
    """The machine in one line; ``triton_interpret``: a CPU run of Triton kernels (interpreter)."""
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return (f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    return (f"{platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}"
            + (", TRITON_INTERPRET=1" if triton_interpret else ""))


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
