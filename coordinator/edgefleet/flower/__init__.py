"""``edgefleet.flower``."""
