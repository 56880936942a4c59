"""The tri-mode server as an NVIDIA Dynamo worker: Dynamo's own SGLang worker (``python -m
dynamo.sglang``, ai-dynamo 1.6.1) with NLD's per-request fields bridged to the algorithm.

Run it as ``python -m nemotron_sglang.serving.dynamo_worker <dynamo.sglang's flags>``, or
``nemotron-sglang serve --dynamo`` (serve's defaults, this entry instead of SGLang's server).

What Dynamo drops, and the bridge (read in its code, and tried):
- Its frontend checks an OpenAI body against its own schema: a top-level ``decode_mode`` is a 400,
  and the worker builds SGLang's sampling parameters from an allow-list (no ``custom_params``).
  The one per-request channel it carries to the worker untouched is ``nvext.annotations``, a list
  of strings. So a request names its NLD fields there, one annotation each:
  ``"nvext": {"annotations": ["nld.decode_mode=diffusion", "nld.threshold=0.9"]}`` (the value is
  JSON if it parses, else the text). ``fields_from_annotations`` reads them into
  ``custom_params``; an unknown ``nld.`` field is a 400 naming it.
- Its native ``POST /generate`` (frontend with ``DYN_SGLANG_ENABLE_GENERATE=1``; streaming only)
  keeps SGLang's whole request, ``custom_params`` included, and its response carries SGLang's
  ``meta_info`` (the ``nld_*`` counters). Dynamo's diffusion handler ignores that payload (the
  frontend then fails with "missing opaque SGLang response"); its decode handler serves it. The
  engine decodes with the dLLM algorithm whichever handler submits, so ``TriModeHandler`` runs the
  decode handler's ``generate`` for every request.
- A refused field (the plugin's main-process check raises ``ValueError("nemotron-sglang: ...")``
  from SGLang's tokenizer manager) would be a 500 through Dynamo; the handler raises Dynamo's
  ``InvalidArgument`` with the same message instead: a 400 whose message names the field (its
  ``HttpError(400, ...)`` reaches the client as a bare "Bad Request").

The substitution is one checked assignment at start-up (``install``): ``dynamo.sglang.
init_diffusion`` builds its handler from its module-level name ``DiffusionWorkerHandler``, which
must still be Dynamo's class; the methods the handler calls must exist. Anything else fails loudly
before the worker starts. Nothing of Dynamo's or SGLang's source is changed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterable

from ..sglang_plugin.params import ParamError, add_custom

PREFIX = "nld."
# the fields a request may set through annotations: NLD's decode fields (the OpenAI ``suffix`` is
# not one: Dynamo's completions route does not carry it)
BRIDGED = ("decode_mode", "threshold", "block_length", "max_steps", "canvas")
ANNOTATIONS_FIELD = "nvext.annotations"

# one machine, no etcd or NATS, nothing off loopback (docs/scale-out.md): file discovery (its store
# under DYN_FILE_KV), the TCP request plane, the ZMQ event plane; without the host variables Dynamo
# and SGLang advertise the machine's interface address. For the frontend and every worker.
LOCAL_ENV = {"DYN_DISCOVERY_BACKEND": "file", "DYN_REQUEST_PLANE": "tcp", "DYN_EVENT_PLANE": "zmq",
             "SGLANG_HOST_IP": "127.0.0.1", "DYN_TCP_RPC_HOST": "127.0.0.1",
             "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1", "DYN_EVENT_PLANE_HOST": "127.0.0.1",
             "DYN_SYSTEM_HOST": "127.0.0.1"}
# the frontend's: the native /generate route on, and a refusal that arrives within 2 s of a
# stream's start is a real HTTP 400 rather than an error event in a 200 stream
FRONTEND_ENV = {"DYN_SGLANG_ENABLE_GENERATE": "1", "DYN_HTTP_PRE_COMMIT_ERROR_PEEK_MS": "2000"}

INIT_MODULE = "dynamo.sglang.init_diffusion"
HANDLER_NAME = "DiffusionWorkerHandler"
# the methods of Dynamo's decode handler that TriModeHandler calls or overrides
CALLED = ("generate", "_build_sampling_params")


def fields_from_annotations(annotations: Iterable[Any] | None) -> dict[str, Any]:
    """``{field: value}`` of the ``nld.<field>=<value>`` annotations (others are Dynamo's);
    the value is JSON when it parses (numbers, lists, ``null``), else the text. Raises
    :class:`ParamError` for a malformed or unknown ``nld.`` annotation."""
    out: dict[str, Any] = {}
    for note in annotations or ():
        if not isinstance(note, str) or not note.startswith(PREFIX):
            continue
        key, sep, raw = note[len(PREFIX):].partition("=")
        if not sep or key not in BRIDGED:
            raise ParamError(ANNOTATIONS_FIELD, f"{note!r}: expected {PREFIX}<field>=<value> "
                                                f"with a field of {', '.join(BRIDGED)}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _refusal(error: Exception) -> str | None:
    """The message of an NLD refusal (the plugin's ``ParamError``, or the ``ValueError`` its
    main-process hook raises from SGLang), else None."""
    if isinstance(error, ParamError):
        return f"nemotron-sglang: {error}"
    if isinstance(error, ValueError) and str(error).startswith("nemotron-sglang:"):
        return str(error)
    return None


def handler_class() -> type:
    """``TriModeHandler``: Dynamo's diffusion handler class with the decode handler's
    ``generate`` (module docstring), the annotation fields in ``custom_params`` and refusals as
    HTTP 400."""
    from dynamo.llm.exceptions import InvalidArgument
    from dynamo.sglang.request_handlers.llm.decode_handler import DecodeWorkerHandler
    from dynamo.sglang.request_handlers.llm.diffusion_handler import DiffusionWorkerHandler

    class TriModeHandler(DiffusionWorkerHandler):
        """Dynamo's SGLang handler for the tri-mode algorithm (``dynamo_worker`` module)."""

        def _build_sampling_params(self, request: dict[str, Any]) -> dict[str, Any]:
            params = DecodeWorkerHandler._build_sampling_params(self, request)
            add_custom(params, fields_from_annotations(request.get("annotations")))
            return params

        async def generate(self, request: dict[str, Any], context):
            try:
                async for out in DecodeWorkerHandler.generate(self, request, context):
                    yield out
            except (ParamError, ValueError) as e:
                message = _refusal(e)
                if message is None:
                    raise
                raise InvalidArgument(message) from None

    return TriModeHandler


def install() -> type:
    """Make Dynamo's diffusion worker build ``TriModeHandler``; checked (module docstring)."""
    import importlib

    init = importlib.import_module(INIT_MODULE)
    from dynamo.sglang.request_handlers.llm.decode_handler import DecodeWorkerHandler
    from dynamo.sglang.request_handlers.llm.diffusion_handler import DiffusionWorkerHandler

    if getattr(init, HANDLER_NAME, None) is not DiffusionWorkerHandler:
        raise RuntimeError(f"nemotron-sglang: {INIT_MODULE}.{HANDLER_NAME} is not Dynamo's "
                           f"diffusion handler; this Dynamo is not the one the bridge was built "
                           f"for (ai-dynamo 1.6.1)")
    missing = [m for m in CALLED if not callable(getattr(DecodeWorkerHandler, m, None))]
    if missing:
        raise RuntimeError(f"nemotron-sglang: Dynamo's DecodeWorkerHandler lacks {missing}")
    handler = handler_class()
    setattr(init, HANDLER_NAME, handler)
    return handler


def main(argv: list[str] | None = None) -> None:
    """Dynamo's SGLang worker (its ``python -m dynamo.sglang``) with the bridge installed."""
    os.environ.setdefault("PYTHONHASHSEED", "0")    # as dynamo.sglang's __main__ does
    install()
    from dynamo.sglang.main import main as dynamo_main

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    dynamo_main()


if __name__ == "__main__":
    main()
