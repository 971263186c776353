"""The networks of the paper and everything that produces weights (see DESIGN.md). Imports
nothing of ``engines`` or ``server`` (``.importlinter``)."""
