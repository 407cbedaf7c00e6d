"""The streaming dataset check: records, formats, lengths, duplicates and contamination, at each record's line."""
