"""Great Expectations suites (one JSON per dataset) and the project's own expectations."""
