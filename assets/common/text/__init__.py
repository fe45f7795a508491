"""Text primitives shared by dedup and decontamination (no Dagster here): :mod:`.normalize` (normalization,
shingling, the numba hashes), :mod:`.minhash` (signatures and LSH banding), :mod:`.embeddings` (offline sentence
embeddings, their cache and cosine neighbours)."""
