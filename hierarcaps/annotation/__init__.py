"""Curation in Label Studio: push candidate hierarchies as tasks, pull the reviewed work as a curated split."""
