"""Judges (diversity embedders, quality scorers) as plug-ins: protocols in ``base``, text judges in ``text``."""
