"""The recurrent-chain method: J of a chain of recurrent and per-step layers as products of per-step Jacobians."""
