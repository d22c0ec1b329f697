"""Toy worlds for fast, exactly-verifiable alignment experiments."""
