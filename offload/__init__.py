"""kimi-offload: run Kimi K2.5-class MoE checkpoints with experts offloaded to RAM and disk."""

__version__ = "0.1.0"
