"""Expert math on each weight format. Imports nothing from `offload`."""
