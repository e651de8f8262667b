"""Model serving, replica side: `batching` (the pure batching decision and the asyncio
batcher around it), `models` (ONNX Runtime sessions and their LRU cache), `inputs` (request
bodies to images) and `replica_app` (the HTTP handler and the server that runs it)."""
