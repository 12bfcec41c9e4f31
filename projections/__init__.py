"""Projections: the pure portfolio fold, the SQL tables, and the projector that writes folds to the database."""
