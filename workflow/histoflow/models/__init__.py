"""Dense models: cards (YAML), the built-in model, and loading of TorchScript and entry points."""
