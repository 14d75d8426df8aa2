"""Typed settings: the composed Hydra config read once, checked, and passed down as dataclasses."""
