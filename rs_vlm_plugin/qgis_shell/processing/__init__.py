"""The RS-VLM Processing provider and its algorithms."""
