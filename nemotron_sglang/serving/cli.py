"""The ``nemotron-sglang`` command line: ``serve``, ``generate``, ``make-tiny-checkpoint``,
``corpus`` and ``train-tiny``.

``generate`` runs core's decoders in this process (no server): it is the reference path the
SGLang plugin is compared against. With no ``--model`` it uses the embedded default, the trained
fixture shipped in the package (``nemotron_sglang/data``).
With ``--json`` the last line printed is one JSON object: ``output_ids`` (generated tokens only),
``text``, ``forwards``, ``tokens_per_forward``, ``finish_reason``, ``mode`` and, for
self-speculation, ``acceptance_length``.

``corpus`` prints held-out examples of the rule corpus (``nemotron_sglang.testing.corpus``; with
``--json`` one ``{"prompt", "continuation"}`` object per line) and ``train-tiny`` trains the
rule-corpus fixture (``nemotron_sglang.testing.train_tiny``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.modes import DECODE_MODES as MODES
from ..core.modes import DEFAULT_THRESHOLD


def _ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--prompt-ids must be comma-separated integers: {text!r}") from None


def read_image(path: str):
    """An image file as an RGB uint8 tensor [3, H, W] (PIL decodes it); an unreadable file is
    refused with its path."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from ..core.images import ImageError

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise ImageError(f"--image {path}: not a readable image ({e})") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="nemotron-sglang",
        description="NLD's tri-mode decoding on SGLang: serve it (SGLang's own OpenAI server, or "
                    "a Dynamo worker with --dynamo), decode in-process with core, make and train "
                    "tiny checkpoints.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    from . import serve

    sv = sub.add_parser("serve", help="launch SGLang's OpenAI server with every decode mode "
                                      "(other flags go to sglang.launch_server)")
    serve.add_arguments(sv)

    mk = sub.add_parser("make-tiny-checkpoint", help="write a tiny random NLD checkpoint (HF layout)")
    mk.add_argument("dir")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--block-size", type=int, default=None)
    mk.add_argument("--with-lora", action="store_true")
    mk.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    mk.add_argument("--vlm", action="store_true",
                    help="the vision-language layout (core/vlm_checkpoint.py; fp32, no LoRA)")

    g = sub.add_parser("generate", help="decode one prompt with core's decoders")
    g.add_argument("--model", default=None, help="checkpoint dir (default: embedded tiny model)")
    g.add_argument("--mode", choices=MODES, default="ar")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt")
    src.add_argument("--prompt-ids", type=_ids)
    g.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image file for a VLM checkpoint (repeatable); each [IMG] in the "
                        "prompt marks where one goes, else the images precede the prompt")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--block-length", type=int, default=None)
    g.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    g.add_argument("--max-steps", type=int, default=None,
                   help="diffusion: at most this many denoise passes per block")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    lora = g.add_mutually_exclusive_group()
    lora.add_argument("--lora", dest="lora", action="store_true", default=None)
    lora.add_argument("--no-lora", dest="lora", action="store_false")
    g.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32")
    g.add_argument("--json", action="store_true")

    c = sub.add_parser("corpus", help="print rule-corpus examples (prompt + continuation)")
    c.add_argument("--n", type=int, default=10)
    c.add_argument("--seed", type=int, default=1_000_000,
                   help="corpus seed (evaluation seeds are >= 1000000, training seeds below)")
    c.add_argument("--json", action="store_true", help='one {"prompt","continuation"} per line')

    t = sub.add_parser("train-tiny", help="train the tiny NLD fixture on the rule corpus")
    t.add_argument("out_dir")
    t.add_argument("--minutes", type=float, default=None,
                   help="safety deadline for the whole run (the schedule is set by --steps)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=None, help="base-model optimizer steps")
    t.add_argument("--lora-steps", type=int, default=None)
    t.add_argument("--batch", type=int, default=None)
    t.add_argument("--seq-len", type=int, default=None)
    t.add_argument("--data-docs", type=int, default=None)
    t.add_argument("--dlm-weight", type=float, default=None)
    t.add_argument("--lr", type=float, default=None, help="peak learning rate")
    t.add_argument("--warmup", type=int, default=None)
    t.add_argument("--chat-rows", type=int, default=None,
                   help="rows of chat / thinking / tool conversations per step (0: none)")
    t.add_argument("--chat-len", type=int, default=None)
    t.add_argument("--chat-docs", type=int, default=None)
    t.add_argument("--chat-weights", default=None,
                   help='question kinds drawn more often, e.g. "add=3,sequence=3" (others 1)')
    t.add_argument("--chat-aligned", type=float, default=None,
                   help="share of chat rows whose last block opens on a reply (0: none)")
    t.add_argument("--chat-reply-weight", type=float, default=None,
                   help="scale of the diffusion loss on those rows' reply block (default 1)")
    t.add_argument("--chat-reply-uniform-t", action="store_const", const=True, default=None,
                   help="that reply block's mask ratio uniform (default Beta(2, 1))")
    t.add_argument("--reply-rows", type=int, default=None,
                   help="more rows per step: short conversation windows ending in a reply block")
    t.add_argument("--reply-len", type=int, default=None)
    t.add_argument("--init", default=None,
                   help="continue from this checkpoint's weights (same tokenizer and shape)")
    t.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    t.add_argument("--quiet", action="store_true")
    return ap


def _make(args) -> int:
    from ..core.weights import write_tiny_checkpoint

    if args.vlm:
        if args.with_lora or args.block_size is not None or args.dtype != "float32":
            raise ValueError("--vlm takes only --seed (fp32, the tiny block, no LoRA)")
        from ..core.vlm_checkpoint import write_tiny_vlm_checkpoint

        print(write_tiny_vlm_checkpoint(args.dir, seed=args.seed))
        return 0
    d = write_tiny_checkpoint(args.dir, seed=args.seed, block_size=args.block_size,
                              with_lora=args.with_lora, dtype=args.dtype)
    print(d)
    return 0


def _generate(args) -> int:
    import torch

    from ..core.decoding import DecodeParams, Request, generate
    from ..core.images import expand_prompt, preprocess
    from ..core.tokenizer import decode, encode, load_tokenizer
    from ..core.vision import prompt_embeds
    from ..core.vlm_checkpoint import is_vlm_dir, load_image_spec, load_vlm
    from ..core.weights import load_model

    if args.model:
        model_dir = Path(args.model)
    else:
        from .serve import embedded_model

        model_dir = embedded_model()
    vlm = is_vlm_dir(model_dir)
    if args.image and not vlm:
        raise ValueError(f"--image: {model_dir} is not a vision-language checkpoint")
    if vlm:
        if args.lora:
            raise ValueError("--lora: the VLM checkpoint has no drafting LoRA")
        model, encoder = load_vlm(model_dir, dtype=getattr(torch, args.dtype))
    else:
        model = load_model(model_dir, dtype=getattr(torch, args.dtype), lora=args.lora)
    tok = load_tokenizer(model_dir) if (model_dir / "tokenizer.json").exists() else None
    if args.prompt is not None:
        if tok is None:
            raise ValueError(f"{model_dir} has no tokenizer.json; use --prompt-ids")
        prompt = encode(tok, args.prompt)
    else:
        prompt = args.prompt_ids
    embeds = None
    if vlm:
        spec = load_image_spec(model_dir, encoder.cfg)
        pixels, sizes = preprocess([read_image(p) for p in args.image], spec)
        prompt = expand_prompt(prompt, sizes, spec)
        embeds = prompt_embeds(model.encoder.embed_tokens, encoder, torch.tensor(prompt),
                               pixels.to(model.dtype), sizes)
    params = DecodeParams(max_new_tokens=args.max_new_tokens, block_length=args.block_length,
                          threshold=args.threshold, temperature=args.temperature, seed=args.seed,
                          use_lora=args.lora is not False, max_steps=args.max_steps)
    (res,) = generate(model, [Request(prompt, args.mode, params, prompt_embeds=embeds)])
    text = decode(tok, res.output_ids, skip_special=True) if tok is not None else None
    out = {"mode": res.mode, "output_ids": res.output_ids, "text": text,
           "forwards": res.forwards, "tokens_per_forward": round(res.tokens_per_forward, 4),
           "finish_reason": res.finish_reason, "acceptance_length": res.acceptance_length,
           "lora": model.has_lora and args.lora is not False and args.mode == "linear_spec"}
    if args.json:
        print(json.dumps(out))
    else:
        print(text if text is not None else res.output_ids)
        print(f"[{res.mode}] {len(res.output_ids)} tokens, {res.forwards} forwards, "
              f"TPF {res.tokens_per_forward:.2f}, finish {res.finish_reason}", file=sys.stderr)
    return 0


def _corpus(args) -> int:
    from ..testing.corpus import examples

    if args.n < 0:
        raise ValueError(f"--n must be >= 0, got {args.n}")
    for ex in examples(args.seed, args.n):
        if args.json:
            print(json.dumps(ex))
        else:
            print(ex["prompt"] + "\u2502" + ex["continuation"] + "\n")
    return 0


def _train_tiny(args) -> int:
    import torch

    from ..testing.train_tiny import TrainConfig, train

    torch.set_num_threads(args.threads)
    tc = TrainConfig(seed=args.seed)
    for name in ("steps", "lora_steps", "batch", "seq_len", "data_docs", "dlm_weight", "lr",
                 "warmup", "chat_rows", "chat_len", "chat_docs", "chat_weights", "chat_aligned",
                 "chat_reply_weight", "chat_reply_uniform_t", "reply_rows", "reply_len",
                 "init"):
        v = getattr(args, name)
        if v is not None:
            setattr(tc, name, v)
    print(json.dumps(train(args.out_dir, tc, quiet=args.quiet, minutes=args.minutes)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.cmd != "serve":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.cmd == "serve":
            from .serve import main as serve_main

            return serve_main(args, extra)
        if args.cmd == "corpus":
            return _corpus(args)
        if args.cmd == "train-tiny":
            return _train_tiny(args)
        return _make(args) if args.cmd == "make-tiny-checkpoint" else _generate(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"nemotron-sglang: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
