"""Serving MiniMind models: an OpenAI-compatible HTTP server on Ray Serve with continuous batching,
streaming, a chat page at `/`, and live weight updates from an RL run (`serving.app.start`)."""
