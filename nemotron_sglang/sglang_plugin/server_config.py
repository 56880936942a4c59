"""The server's configuration as SGLang holds it, and what validating a request needs.

- ``TriModeConfig``: SGLang's ``DllmConfig`` of an NLD server (the plugin's hook on
  ``DllmConfig.from_server_args`` builds it from the checkpoint and the algorithm YAML), with
  the YAML read once into core's ``ServerSettings`` (``settings``; every key checked there) and
  the server's request defaults (``params.ServerDefaults``); SGLang's
  scheduler calls its ``validate_request`` once for every request it receives (a refusal is a
  400). Its parse is the request's only one: an accepted request leaves with its plugin state
  begun (``admit``: ``req.nld``, a ``request.NLDRequest`` holding the parsed parameters), which
  the algorithm completes at first sight (``NemotronTriMode.request``).
- ``sampling_view``: an SGLang ``Req``'s sampling parameters as the plain ``params.SamplingView``;
  ``custom_transform``: its custom logit processor as core's rule transform.
"""

from __future__ import annotations

from typing import Optional

from sglang.srt.dllm.config import DllmConfig
from sglang.srt.sampling.sampling_params import TOP_K_ALL

from ..core.server_settings import ServerSettings
from .params import ParamError, SamplingView, ServerDefaults, parse
from .request import NLDRequest



def sampling_view(req) -> SamplingView:
    """The sampling features of an SGLang ``Req`` as plain values. Greedy is what SGLang calls
    greedy: ``top_k == 1`` (its ``SamplingParams`` turn T < ``_SAMPLING_EPS`` into top_k 1, T 1
    on construction); core's greedy is T = 0."""
    sp = req.sampling_params
    greedy = sp.top_k == 1
    lp = getattr(req, "logprob", None)
    bias = tuple(sorted((int(k), float(v)) for k, v in (sp.logit_bias or {}).items()))
    return SamplingView(
        temperature=0.0 if greedy else float(sp.temperature),
        top_p=float(sp.top_p), top_k=0 if greedy or sp.top_k in (-1, TOP_K_ALL) else int(sp.top_k),
        min_p=float(sp.min_p), frequency_penalty=float(sp.frequency_penalty),
        presence_penalty=float(sp.presence_penalty),
        repetition_penalty=float(sp.repetition_penalty),
        min_new_tokens=int(sp.min_new_tokens or 0), logit_bias=bias,
        logprobs=bool(req.return_logprob),
        top_logprobs=int(getattr(lp, "top_logprobs_num", 0) or 0) if req.return_logprob else 0,
        token_ids_logprob=tuple(int(t) for t in (getattr(lp, "token_ids_logprob", None) or ()))
        if req.return_logprob else (),
        seed=getattr(sp, "sampling_seed", None),
        grammar=any(getattr(sp, f, None) for f in ("regex", "json_schema", "ebnf", "structural_tag"))
        or (sp.custom_params or {}).get("thinking_budget") is not None)


def custom_transform(req):
    """The request's custom logit processor (``--enable-custom-logit-processor``; SGLang
    deserialises it, cached per string) as a rule transform on rows [n, V], or None. Each row
    gets the request's ``custom_params`` (``__req__`` included), one dict per row: SGLang's own
    convention for the rows of a speculative verify (``apply_custom_logit_processor`` with
    ``num_tokens_in_batch``). So a processor that reads only its parameters gives the same law
    at every row; one that reads ``__req__.output_ids`` sees the output before the pass."""
    serialized = getattr(req, "custom_logit_processor", None)
    if not serialized:
        return None
    from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor

    processor = CustomLogitProcessor.from_str(serialized)
    params = req.sampling_params.custom_params

    def transform(z):
        return processor(z, [params] * z.shape[0])
    return transform


class TriModeConfig(DllmConfig):
    """SGLang's ``DllmConfig`` of an NLD server (built by ``hooks.dllm_config_from_server_args``)
    with its YAML checked once and the request defaults it gives (``defaults``); SGLang's
    scheduler asks it to validate every request, so no class-level state is needed."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        yaml = dict(self.algorithm_config or {})
        self.model_path = yaml.pop("model_path", None)      # the hook's, not the YAML's
        try:
            self.settings = settings = ServerSettings.from_mapping(yaml)
        except ParamError as e:
            raise ValueError(f"NemotronTriMode YAML {e}") from None
        self.defaults = ServerDefaults(
            default_mode=settings.default_mode, threshold=settings.threshold,
            block_size=self.block_size, auto_max_batch=settings.auto_max_batch)
        parse({}, SamplingView(), self.defaults)  # a bad default fails at startup

    def admit(self, req) -> NLDRequest:
        """``req``'s plugin state with its parameters parsed against the server's defaults
        (raises ``ParamError``): the one place the scheduler parses a request."""
        params = parse(req.sampling_params.custom_params, sampling_view(req), self.defaults)
        return NLDRequest.admitted(params, req.rid)

    def validate_request(self, req) -> Optional[str]:
        """None, or why ``req`` is refused (SGLang answers it with a 400). An accepted request
        carries its parse to the algorithm: ``req.nld``, begun here (``admit``)."""
        try:
            nld = self.admit(req)
        except ParamError as e:
            return f"nemotron-sglang: {e}"
        try:                     # loaded here once, so a bad one is a 400, not a crashed round
            custom_transform(req)
        except Exception as e:   # whatever the deserialiser raises
            return f"nemotron-sglang: custom_logit_processor: not a loadable processor ({e})"
        req.nld = nld
        return None
