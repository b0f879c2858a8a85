"""seqio task registrations. `import tasks.pretraining` registers the UL2 / PrefixLM pretraining tasks."""
