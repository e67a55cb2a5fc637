"""Model repository contract, TF-Serving-compatible embedded server and gRPC client
(lands with the serving issue)."""
