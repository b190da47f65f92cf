"""``edgefleet.devtools``."""
