"""Pure decisioning: the action catalogue, eligibility, contact policy, arbitration,
exploration and explanations (no Redis, Kafka, Bytewax or web code here)."""
