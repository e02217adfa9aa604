"""Flower plumbing both sides of the training share: SecAgg+'s exact integer encoding
(``secure``) and shorter waits in Flower's pulls (``fastpull``)."""
