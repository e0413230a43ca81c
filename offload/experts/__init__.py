"""Routed experts: the interface the MoE layer calls, and its implementations."""
