"""MinHash signatures and LSH banding over normalized text: the primitives that deduplication
(:mod:`assets.dedup`) and decontamination (:mod:`assets.decontamination`) share (no Dagster here).

* :mod:`.config`: :class:`~.config.MinHashConfig` (shingles, signature length, threshold, hash, banding) and
  :func:`~.config.optimal_param`, datasketch's choice of (bands, rows);
* :mod:`.signatures`: the ``(rows, num_perm)`` uint32 signature matrix of a batch of texts (numba kernels)
  and the comparison of signatures (:func:`~.signatures.equal_counts`, :func:`~.signatures.estimated_jaccard`);
* :mod:`.lsh`: band hashes and the candidate pairs they give, within one set of rows or between two.

Pipeline (all vectorized; no per-document or per-shingle Python loop):

1. normalize the text with polars (:func:`assets.common.text.normalize.normalize_expr`) and take its UTF-8 buffer;
2. one parallel numba kernel splits every document into shingles (word or char n-grams), hashes each
   shingle (XXH64 by default, or SHA-1 exactly like datasketch) and takes the min over ``num_perm`` affine
   permutations -> a ``(rows, num_perm)`` uint32 signature matrix;
3. the first ``bands * rows`` signature values are cut into bands, each hashed to 64 bits;
4. rows sharing a band hash are candidate pairs; a caller verifies each on the signatures (fraction of
   equal values, the estimated Jaccard).

Signatures match datasketch (>= 2.0, default ``scheme="affine32"``): the input hash is pre-mixed with the
MurmurHash3 32-bit finalizer and permuted with ``a * h + b mod 2**32``, ``a``/``b`` drawn from
``np.random.RandomState(seed)`` exactly as ``datasketch.MinHash(num_perm, seed)`` draws them. With
``hash="sha1"`` the signature of a document equals ``MinHash(num_perm, seed)`` updated with its shingles'
UTF-8 bytes, value for value. The default ``hash="xxh64"`` only swaps the 32-bit input hash of a shingle:
for char shingles XXH64 of its bytes, for word shingles an XXH64-style combination of the XXH64 of each word
(every word is hashed once), folded to 32 bits. The signature kernel is ~5x faster with it than with SHA-1
and keep/drop decisions agree with datasketch's on > 99.9% of rows (benchmarks/dedup.py).
"""
