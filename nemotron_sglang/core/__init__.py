"""Pure-PyTorch core of nemotron-sglang: every piece of NLD model knowledge lives here.

Imports torch, safetensors and tokenizers only; never sglang, triton or flashinfer.
"""
