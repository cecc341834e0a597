"""The seven Confluent Cloud service handlers, in gather order (spec/confluent-cloud.md §6)."""
