"""Pure per-customer state: profile updates, rendering, and (in ``store``) the Redis layout."""
