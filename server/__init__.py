"""The live server, the control channel, the kiosk mode and the ``etf`` CLI: thin, on top
of ``engines`` and ``etf_models``."""
