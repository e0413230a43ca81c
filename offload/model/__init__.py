"""The DeepSeek-V3 / Kimi K2 forward pass, in paper order."""
