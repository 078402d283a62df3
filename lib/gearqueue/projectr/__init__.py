"""ProjectR: project a target expression matrix onto pattern loadings.

The job (`gearqueue.jobs.projectr`) is thin; the work is split into single-purpose
modules so each can be read and tested alone. The target datasets and the text
tables are read by `gearqueue.matrices`, which every job shares.

- `request`    gEAR's message fields, checked; the deterministic default projection id
- `carts`      the pattern loadings, `cart.<id>.tab`
- `matching`   projectR's gene matching (geneMatchR): exact ids, first row wins
- `engine`     what an engine is and which one runs; `r_engine` (+ `projectr.R`) is the
  reference and the default, `numpy_engine` (+ `linpack`) agrees with it to 1e-8
- `projection` the chunk loop: z-scores, missing values, centring over all samples
- `outputs`    result CSVs and the projections.json indexes, written atomically (and
  locked with `gearqueue.files.exclusive`)
"""
