"""Domains: where prompts come from, how generations are judged and written (protocol in ``base``)."""
