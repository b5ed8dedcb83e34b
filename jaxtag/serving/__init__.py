"""Serving: bundles, export to other runtimes, tagging, weight import."""
