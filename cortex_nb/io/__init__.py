"""The run's IO: profiles and their schema, files and token stores, tables, figures, provenance, stage deps."""
