"""Watching served models: drift of the served inputs and answers against the training reference."""
