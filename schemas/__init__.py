"""The data contract: Unischema(s), label vocabularies and the schema version."""
