"""The state store: SQLAlchemy models, the engine, and Alembic migrations."""
