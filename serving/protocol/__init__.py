"""The model server's protocols: thin adapters around one store (``serving.store``)."""
