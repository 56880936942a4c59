"""Scheduling under KV pressure: the hooks that keep a tri-mode server running when its requests
outgrow the KV pool, and that let such requests be aborted.

- AROUND ``SchedulerDllmMixin.get_new_batch_dllm``: SGLang's dLLM scheduler tries prefills first
  and runs nothing when they do not fit, and it never retracts: once the requests hold so much KV
  that no prefill and no canvas fits, nothing runs, and SGLang's idle check reports the held KV
  as a leak and kills the server (seen on CPU with ``--max-total-tokens 320``). This runs the
  decodes when no prefill fits and, when no canvas fits either, retracts the newest KV-holding
  request (its KV freed, its committed output kept; SGLang's ``release_req``) and parks
  it until the pool has room for its re-prefill plus two canvases, or nothing else runs; it then
  re-enters as a prefill, and its next context pass starts a fresh core state from the AR-exact
  seed. Parked requests are kept on the scheduler (``scheduler.nld_parked``). A lone request
  whose next canvas does not fit the whole pool is aborted with an error naming the pool
  (``abort_lone``), as SGLang's AR path aborts its last request ("out of memory even after
  retracting ..."): nothing else could ever free room for it. First it moves the requests whose
  grammar is compiled from SGLang's grammar queue to the waiting queue
  (``release_ready_grammars``: SGLang's dLLM path never does, and they would wait forever).
- AFTER ``Scheduler.abort_request``: SGLang looks for the request to abort in its own queues,
  never in ``nld_parked``; a parked request (it holds no KV) is dropped there and its abort
  answered as SGLang answers a queued one.

    pool: [ A A A A | B B B | C C C C C | free ]   no canvas of 33 fits
    retract C (newest holder) -> parked, KV freed; A and B run; C re-enters when
    free >= len(C) + 2 canvases, or when nothing else runs
"""

from __future__ import annotations

import logging
from http import HTTPStatus

logger = logging.getLogger(__name__)

SCHEDULE_TARGET = "sglang.srt.dllm.mixin.scheduler.SchedulerDllmMixin.get_new_batch_dllm"
ABORT_TARGET = "sglang.srt.managers.scheduler.Scheduler.abort_request"
# SGLang functions these hooks call (checked at registration, like the targets)
CALLED = ("sglang.srt.constrained.grammar_manager.GrammarManager.get_ready_grammar_requests",
          "sglang.srt.constrained.grammar_manager.GrammarManager.has_waiting_grammars",
          "sglang.srt.managers.scheduler.Scheduler._add_request_to_queue",
          "sglang.srt.managers.scheduler.Scheduler._release_aborted_request",
          "sglang.srt.managers.scheduler.Scheduler.send_abort_output",
          "sglang.srt.managers.scheduler._make_abort_req",
          "sglang.srt.mem_cache.common.release_kv_cache")


def _parked(scheduler) -> list:
    parked = getattr(scheduler, "nld_parked", None)
    if parked is None:
        parked = scheduler.nld_parked = []
    return parked


def schedule_with_retraction(original, self, running_batch):
    """SGLang's dLLM batch choice, plus decode-when-prefill-is-blocked and retraction when
    KV-starved (see the docstring)."""
    release_ready_grammars(self)
    manager, parked = self.dllm_manager, _parked(self)
    block = self.dllm_config.block_size
    allocator = self.token_to_kv_pool_allocator
    parked[:] = [r for r in parked if not r.finished()]
    while parked:                  # readmit the oldest parked request once it fits
        req = parked[0]
        need = len(req.origin_input_ids) + len(req.output_ids) + 2 * block
        if _holders(manager) and allocator.available_size() < need:
            break
        manager.waiting_queue.insert(0, parked.pop(0))
    batch = original(self, running_batch)
    if batch is not None:
        return batch
    # SGLang tries prefills first and runs nothing when they do not fit: run the decodes
    batch = _decode_batch(self, running_batch)
    while batch is None:
        holders = _holders(manager)
        if not holders:
            return None
        if len(holders) == 1:      # alone in the pool and its canvas does not fit: never will
            abort_lone(self, holders[0])
            return None
        _retract(self, holders[-1])
        batch = _decode_batch(self, running_batch)
    return batch


def release_ready_grammars(scheduler) -> None:
    """Requests whose grammar SGLang's backend has compiled go to the waiting queue, as
    SGLang's AR scheduler does first thing (``_get_new_batch_prefill_raw``); its dLLM path
    never polls the grammar queue, so a grammar request would wait forever."""
    grammars = scheduler.grammar_manager
    if grammars.has_waiting_grammars():
        for req in grammars.get_ready_grammar_requests():
            scheduler._add_request_to_queue(req)


def _holders(manager) -> list:
    return [r for r in manager.waiting_queue
            if r.kv.holds_kv and not r.finished() and not r.is_dllm_prefill()]


def _decode_batch(scheduler, running_batch):
    """The decode half of SGLang's ``get_new_batch_dllm`` (its own steps, in its order), for
    a round in which no prefill fits."""
    from sglang.srt.dllm.mixin.req import DllmReqPhase
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.observability.req_time_stats import set_time_batch

    decode = scheduler.dllm_manager.get_decode_requests()
    if not decode:
        return None
    adder = scheduler._create_dllm_prefill_adder(len(running_batch.reqs),
                                                 running_batch=running_batch)
    scheduler._process_batch_by_phase(adder, decode, DllmReqPhase.STAGING_DECODE,
                                      DllmReqPhase.INCOMING_DECODE, running_batch=running_batch)
    if not adder.can_run_list:
        return None
    set_time_batch(adder.can_run_list, "set_forward_entry_time")
    scheduler._update_state_for_batch(adder.can_run_list, adder)
    return scheduler._create_dllm_batch(adder.can_run_list, ForwardMode.DLLM_EXTEND,
                                        adder=adder, running_batch=running_batch)


def _retract(scheduler, req) -> None:
    from sglang.srt.dllm.mixin.req import DllmReqPhase
    from sglang.srt.managers.schedule_batch import release_req

    release_req(req=req, remaing_req_count=0, req_to_token_pool=scheduler.req_to_token_pool,
                token_to_kv_pool_allocator=scheduler.token_to_kv_pool_allocator,
                tree_cache=scheduler.tree_cache, hisparse_coordinator=None, offload_kv=False)
    req.dllm_phase = DllmReqPhase.INCOMING_PREFILL
    nld = getattr(req, "nld", None)
    if nld is not None:
        nld.keep = 0
    scheduler.dllm_manager.waiting_queue.remove(req)
    _parked(scheduler).append(req)
    logger.info("NemotronTriMode: retracted request %s under KV pressure (%d output tokens "
                "kept; it re-prefills when the pool has room)", req.rid, len(req.output_ids))


def abort_lone(scheduler, req) -> None:
    """End ``req``, the only request holding KV, whose next canvas does not fit the whole pool:
    its KV freed, an abort answered with the reason (what SGLang's dLLM abort path does for a
    queued request, with a message)."""
    from sglang.srt.mem_cache.common import release_kv_cache

    pool = scheduler.max_total_num_tokens
    held = len(req.origin_input_ids) + len(req.output_ids)
    message = (f"KV cache pool too small: the request holds {held} tokens and its next "
               f"{scheduler.dllm_config.block_size}-slot canvas does not fit the "
               f"{pool}-token pool (--max-total-tokens); {len(req.output_ids)} tokens were "
               f"generated")
    manager = scheduler.dllm_manager
    for queue in (manager.waiting_queue, manager.staging_queue):
        if req in queue:
            queue.remove(req)
    _answer_abort(scheduler, req, {"type": "abort", "message": message,
                                   "status_code": HTTPStatus.INTERNAL_SERVER_ERROR,
                                   "err_type": None})
    release_kv_cache(req, scheduler.tree_cache, checkpoint=False)
    logger.warning("NemotronTriMode: aborted request %s: %s", req.rid, message)


def abort_parked(result, scheduler, recv_req) -> None:
    """AFTER ``Scheduler.abort_request`` (``result``: its None): parked requests matching the
    abort (its rid prefix, or all) leave ``nld_parked`` and get SGLang's abort answer; they hold
    no KV."""
    parked = _parked(scheduler)
    hit = [r for r in parked if recv_req.abort_all or r.rid.startswith(recv_req.rid)]
    for req in hit:
        parked.remove(req)
        _answer_abort(scheduler, req, recv_req.finished_reason)
        logger.info("NemotronTriMode: aborted parked request %s", req.rid)


def _answer_abort(scheduler, req, finished_reason) -> None:
    """SGLang's answer to an aborted queued request (its ``abort_request`` steps): the cache-side
    state dropped, the abort sent to the tokenizer with ``finished_reason`` (None: generic)."""
    from sglang.srt.managers.scheduler import _make_abort_req

    scheduler._release_aborted_request(req)
    scheduler.send_abort_output(_make_abort_req(req, finished_reason=finished_reason), req)
