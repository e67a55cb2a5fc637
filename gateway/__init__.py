"""Flask gateway: HTML pages and the JSON API over gRPC to the model server
(lands with the serving issue)."""
