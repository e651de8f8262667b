"""The REST API: routers validate, authenticate, and make one service call."""
