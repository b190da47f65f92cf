"""``edgefleet.client``."""
