"""nemotron-sglang: serving Nemotron-Labs-Diffusion tri-mode models (AR, diffusion, self-spec)."""

__version__ = "0.1.0"
