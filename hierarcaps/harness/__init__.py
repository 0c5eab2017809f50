"""The benchmark harness: dataset x model x protocol -> result JSON, table and plots."""
