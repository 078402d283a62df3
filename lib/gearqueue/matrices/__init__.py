"""Matrix files in and out: MatrixMarket triplets, sparse h5ad, sample/gene annotations."""
