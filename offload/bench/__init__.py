"""`kimi-offload bench`: tokens per second against the machine's own limits, measured in the same run."""
