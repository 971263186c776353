"""etf_models."""
