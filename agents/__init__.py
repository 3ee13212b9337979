"""Model back ends: Claude (Messages API) and the offline agent."""
