"""Read models in PostgreSQL: migrations, projections and the queries over their tables."""
