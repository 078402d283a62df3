## gearqueue ProjectR engine, R side (called from r_engine.py through rpy2).
##
## Sourced once per executor child into an environment of its own. Matrices arrive as
## plain numeric matrices without dimnames: names never travel through R, so R cannot
## mangle them. Orientation is projectR's: data genes x samples, loadings genes x
## patterns, results patterns x samples. See docs/projectr.md for the semantics.
##
## Samples holding NaN/Inf are found from the small products, not by scanning the data:
## a non-finite value anywhere in a sample makes that sample's column of Q1'D (or L'D)
## non-finite, since BLAS multiplies every term (NaN * 0 is NaN). So products run with
## matprod = "blas": R's default would scan every chunk for NaN first and fall back to a
## slow triple loop when it finds one. Every chunk function returns `flagged`, the number
## of samples that held a non-finite value.

## Least squares setup, once per job. qr(tol = 1e-7) is LINPACK's dqrdc2 with limited
## pivoting: the factorisation lm.fit (and so limma::lmFit) uses, so exactly the same
## patterns are found not estimable. Q1 and R1 turn every chunk into one matrix product
## and one triangular solve (BLAS 3) instead of lm.fit's column-by-column Householder.
gq_ls_prepare <- function(L) {
  q <- qr(L, tol = 1e-7, LAPACK = FALSE)
  r <- q$rank
  k <- ncol(L)
  est <- q$pivot[seq_len(r)]
  su <- rep(NA_real_, k)
  if (r > 0) su[est] <- sqrt(diag(chol2inv(q$qr, size = r)))
  list(L = L, Q1 = qr.Q(q)[, seq_len(r), drop = FALSE],
       R1 = qr.R(q)[seq_len(r), seq_len(r), drop = FALSE],
       rank = r, est = est, su = su,
       not_estimable = sort(setdiff(seq_len(k), est)))
}

## Samples (columns) whose product column is not finite, and how many of them really
## hold a NaN/Inf (the rest overflowed; they are refitted too, which is exact anyway).
gq_flag <- function(product, D) {
  flagged <- which(!is.finite(colSums(product)))
  missing <- if (length(flagged)) sum(colSums(!is.finite(D[, flagged, drop = FALSE])) > 0)
             else 0L
  list(columns = flagged, count = missing)
}

## nmf: coef[, s] = argmin_b ||D[, s] - L b||^2, limma::lmFit's numbers. Samples with
## non-finite values are refitted on their finite genes (gq_ls_incomplete), as lmFit does.
## For p-values the residual sum of squares is ||d||^2 - ||Q1'd||^2 (sumsq = ||d||^2 per
## sample, taken by the caller while the chunk is in cache), which needs no genes x samples
## temporaries; where the fit is so close that this difference loses digits
## (RSS < 1e-6 ||d||^2: limma agrees to ~1e-14 ||d||^2), they are formed exactly.
gq_nmf_chunk <- function(fit, D, full, sumsq) {
  old <- options(matprod = "blas")
  on.exit(options(old))
  G <- nrow(D)
  k <- ncol(fit$L)
  n <- ncol(D)
  coef <- matrix(NA_real_, k, n)
  su <- matrix(fit$su, k, n)
  sigma <- rep(NA_real_, n)
  E <- if (fit$rank > 0) crossprod(fit$Q1, D) else NULL
  flag <- gq_flag(if (is.null(E)) D else E, D)
  if (!is.null(E)) {
    coef[fit$est, ] <- backsolve(fit$R1, E)
    if (full && G > fit$rank) {
      rss <- sumsq - colSums(E * E)
      close <- setdiff(which(!(rss > 1e-6 * sumsq)), flag$columns)
      if (length(close)) {
        residual <- D[, close, drop = FALSE] - fit$Q1 %*% E[, close, drop = FALSE]
        rss[close] <- colSums(residual * residual)
      }
      sigma <- sqrt(rss / (G - fit$rank))
    }
  }
  if (length(flag$columns)) {
    part <- gq_ls_incomplete(fit$L, D, flag$columns)
    coef[, flag$columns] <- part$coef
    su[, flag$columns] <- part$su
    sigma[flag$columns] <- part$sigma
  }
  result <- list(coef = coef, flagged = flag$count)
  ## projectR: pval = 2 * pnorm(-|t|), t = coef / stdev.unscaled / sigma (no eBayes).
  if (full) result$pval <- 2 * pnorm(-abs(coef / su / rep(sigma, each = k)))
  result
}

## lmFit's per-probe path for samples with missing values: lm.fit on the finite genes.
## Samples sharing the same missing genes are fitted together (same design).
gq_ls_incomplete <- function(L, D, cols) {
  k <- ncol(L)
  n <- length(cols)
  coef <- matrix(NA_real_, k, n)
  su <- matrix(NA_real_, k, n)
  sigma <- rep(NA_real_, n)
  missing <- !is.finite(D[, cols, drop = FALSE])
  key <- apply(missing, 2, function(m) paste(which(m), collapse = " "))
  for (group in split(seq_len(n), key)) {
    obs <- !missing[, group[1]]
    if (!any(obs)) next
    f <- lm.fit(L[obs, , drop = FALSE], D[obs, cols[group], drop = FALSE])
    r <- f$rank
    coef[, group] <- f$coefficients
    if (r > 0) {
      su[f$qr$pivot[seq_len(r)], group] <- sqrt(diag(chol2inv(f$qr$qr, size = r)))
    }
    if (sum(obs) > r) {
      effects <- as.matrix(f$effects)[(r + 1):sum(obs), , drop = FALSE]
      sigma[group] <- sqrt(colMeans(effects * effects))
    }
  }
  list(coef = coef, su = su, sigma = sigma)
}

## fixednmf: the same fit with coef >= 0, by Lawson-Hanson NNLS (nnls::nnls). As in nmf,
## patterns not estimable from the genes are NA (NNLS alone would pick one of many
## equally good answers, depending on the implementation). ||d - L b||^2 equals
## ||Q1'd - R1 b||^2 + const on the estimable columns, so each sample solves a
## patterns x patterns problem with the same minimiser instead of a genes x patterns one.
gq_nnls_chunk <- function(fit, D) {
  old <- options(matprod = "blas")
  on.exit(options(old))
  k <- ncol(fit$L)
  n <- ncol(D)
  coef <- matrix(NA_real_, k, n)
  B <- if (fit$rank > 0) crossprod(fit$Q1, D) else NULL
  flag <- gq_flag(if (is.null(B)) D else B, D)
  if (!is.null(B)) {
    for (j in setdiff(seq_len(n), flag$columns)) {
      coef[fit$est, j] <- nnls::nnls(fit$R1, B[, j])$x
    }
  }
  for (j in flag$columns) {
    obs <- is.finite(D[, j])
    if (!any(obs)) next
    Lobs <- fit$L[obs, , drop = FALSE]
    q <- qr(Lobs, tol = 1e-7, LAPACK = FALSE)
    est <- q$pivot[seq_len(q$rank)]
    if (length(est)) coef[est, j] <- nnls::nnls(Lobs[, est, drop = FALSE], D[obs, j])$x
  }
  list(coef = coef, flagged = flag$count)
}

## pca (gEAR's plain L'D, missing values as 0) and pca_centered (projectR's prcomp
## method: the caller centres over all samples after the last chunk, and turns the whole
## projection NA if any sample was flagged, as projectR's centring propagates NA).
gq_dot_chunk <- function(L, D, missing_as_zero) {
  old <- options(matprod = "blas")
  on.exit(options(old))
  coef <- crossprod(L, D)
  flag <- gq_flag(coef, D)
  if (missing_as_zero && length(flag$columns)) {
    coef[, flag$columns] <- crossprod(L, gq_zero_missing(D[, flag$columns, drop = FALSE]))
  }
  list(coef = coef, flagged = flag$count)
}

## binary: per pattern, the matched genes with a non-zero weight that are non-zero in the
## sample; missing values count as 0 (a NaN makes its column NA, which is recomputed).
gq_binary_chunk <- function(L, D) {
  old <- options(matprod = "blas")
  on.exit(options(old))
  W <- L != 0
  coef <- crossprod(W, D != 0)
  flag <- gq_flag(coef, D)
  if (length(flag$columns)) {
    coef[, flag$columns] <- crossprod(W, gq_zero_missing(D[, flag$columns, drop = FALSE]) != 0)
  }
  list(coef = coef, flagged = flag$count)
}

## NaN/NA to 0, infinities kept (gEAR's fillna(0)).
gq_zero_missing <- function(D) {
  D[is.na(D)] <- 0
  D
}
