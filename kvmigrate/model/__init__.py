"""Plain values every layer shares: records, errors, config, masking, the request budget, progress
ticks and the result types the phases return (with their JSON form). Imports nothing above it."""
