"""Scaling out: split a study into shards and write their job recipes."""
