"""Training code for RS-VLM models (torch; not shipped in the plugin zip)."""
