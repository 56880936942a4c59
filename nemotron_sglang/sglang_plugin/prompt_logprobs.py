"""Prompt logprobs on the dLLM path: SGLang computes them in the context pass and then drops them.

A context round (the prompt's causal EXTEND, ``algorithm._context_round``) runs the model through
SGLang's own forward, so SGLang's logits processor already computes the prompt's logprobs
(``input_token_logprobs``, the top-k and ``token_ids_logprob`` rows) for every request that asked
(``logprob_start_len`` inside the prompt, OpenAI ``echo`` with ``logprobs``). SGLang's
``process_batch_result_dllm`` returns early for a context batch and never stores them. This hook,
AROUND it, stores them as SGLang's AR prefill does (``add_input_logprob_return_values``, its own
bookkeeping and checks), so they are the plain AR server's values; then SGLang's code runs. A
re-prefill after a retraction keeps the first values (SGLang's own guard).
"""

from __future__ import annotations

TARGET = "sglang.srt.dllm.mixin.scheduler.SchedulerDllmMixin.process_batch_result_dllm"
CALLED = ("sglang.srt.managers.scheduler_components.batch_result_processor."
          "SchedulerBatchResultProcessor.move_logprobs_to_cpu",
          "sglang.srt.managers.scheduler_components.logprob_result_processor."
          "SchedulerLogprobResultProcessor.calculate_num_input_logprobs",
          "sglang.srt.managers.scheduler_components.logprob_result_processor."
          "SchedulerLogprobResultProcessor.add_input_logprob_return_values")


def keep_prompt_logprobs(original, self, batch, result, *args, **kwargs):
    out = result.logits_output
    if (batch.return_logprob and not batch.forward_mode.is_dllm_extend() and out is not None
            and out.input_token_logprobs is not None):
        processor = self.batch_result_processor
        processor.move_logprobs_to_cpu(batch=batch, logits_output=out)
        logprobs = processor.logprob_result_processor
        at = 0
        for i, req in enumerate(batch.reqs):
            n = logprobs.calculate_num_input_logprobs(req, batch.extend_lens[i],
                                                      batch.extend_logprob_start_lens[i])
            if req.return_logprob and n > 0:
                logprobs.add_input_logprob_return_values(i, req, out, at, n,
                                                         last_prefill_chunk=True)
            at += n
    return original(self, batch, result, *args, **kwargs)
