"""Business logic. Routers call one service function; services own transactions."""
