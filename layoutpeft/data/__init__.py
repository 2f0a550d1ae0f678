"""Data: fetch FUNSD (download), cut forms into model windows (windows), batch them (batching)."""
