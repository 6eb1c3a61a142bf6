"""Glue between the psalm library and the outside world: config, dispatch, tracking."""
