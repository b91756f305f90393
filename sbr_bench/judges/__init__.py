"""Harm judges: decide, for each (prompt, response), whether the response complied with a harmful request."""
