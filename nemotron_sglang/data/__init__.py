"""Package data: the embedded default checkpoint, shipped inside the wheel.

``EMBEDDED`` is the trained tiny NLD checkpoint (rule corpus, block 32, with its
``linear_spec_lora`` drafter; see its README): what ``serve`` and ``generate`` use without
``--model``, on every install.
"""

from pathlib import Path

EMBEDDED = Path(__file__).resolve().parent / "nld-tiny-rules"
