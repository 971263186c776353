"""Small assets shipped with the package (built-in sentence)."""
