"""balance-watcher: polls balance APIs, compares, evaluates rules, publishes events to Kafka."""

__version__ = "0.1.0"
