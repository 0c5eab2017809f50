"""The leaderboard: submissions of embeddings, validated and scored with the package's own metric code."""
