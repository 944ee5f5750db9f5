"""Alembic migrations of mdmq's schema, and the function that runs them."""
