"""TFDS builders shipped with jaxtag; one folder per builder."""
