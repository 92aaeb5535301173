"""Reading results: out-of-core reductions of a store, directional sums without a store,
verification of a store against independent references, and the summary figure."""
